"""A pool of chips over a set of sigma values with reusable seeds, so every method sees the very same chips.

Chip ``i`` has sigma index ``i // chips_per_sigma`` and chip number ``i % chips_per_sigma``; its seed derives from
``(seed, sigma index, chip number)`` through ``numpy.random.SeedSequence``, so the same pool arguments give the
same chips in every method and process. Chips are programmed lazily and kept in an LRU cache.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Sequence

import numpy as np
from torch import nn

from cim_gym.hardware.chip import Calibration, Chip, program
from cim_gym.hardware.config import CIMConfig, is_integer, is_number, noise_field

__all__ = ["ChipPool", "pool_seed"]


def pool_seed(seed: int, sigma_index: int, chip_number: int) -> int:
    """The chip seed (63-bit int) of one pool entry: ``SeedSequence(seed, spawn_key=(sigma_index, chip_number))``."""
    state = np.random.SeedSequence(int(seed), spawn_key=(int(sigma_index), int(chip_number))).generate_state(2, np.uint32)
    return ((int(state[0]) << 32) | int(state[1])) & ((1 << 63) - 1)


class ChipPool:
    """Chips of one quantized model over ``sigmas`` x ``chips_per_sigma``.

    :param qmodel: the quantized model (output of ``quantize_model``).
    :param cfg: the chip config (its value of the noise source is replaced by each sigma).
    :param sigmas: the sigma values (a list, or e.g. ``np.linspace(0, 0.1, 11)``); see also :meth:`from_range`.
    :param chips_per_sigma: independent chips per sigma value (>= 1).
    :param seed: the pool seed (non-negative int).
    :param calibration: shared calibration (``calibrate(qmodel, cfg, x)``), needed for output noise / ADC ranges.
    :param noise_source: what sigma sets: a key of ``NOISE_SOURCES`` ("programming" by default, "read", "output", ...).
    :param cache_size: how many programmed chips to keep (LRU; >= 1).
    """

    def __init__(self, qmodel: nn.Module, cfg: CIMConfig, sigmas: Sequence[float], chips_per_sigma: int = 5,
                 seed: int = 0, calibration: Calibration | None = None, noise_source: str = "programming",
                 cache_size: int = 32) -> None:
        raw = np.asarray(sigmas, dtype=object).reshape(-1) if not isinstance(sigmas, str) else np.asarray([sigmas])
        if not all(is_number(s) for s in raw):
            raise ValueError(f"sigmas={sigmas!r} is not allowed: expected a non-empty list of finite numbers >= 0")
        values = [float(s) for s in raw]
        if not values or any(not np.isfinite(s) or s < 0 for s in values):
            raise ValueError(f"sigmas={list(sigmas)!r} is not allowed: expected a non-empty list of finite values >= 0")
        for name, value, lo in (("chips_per_sigma", chips_per_sigma, 1), ("cache_size", cache_size, 1), ("seed", seed, 0)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo:
                raise ValueError(f"{name}={value!r} is not allowed: expected an integer >= {lo}")
        noise_field(noise_source)
        cfg.scaled(noise_source, max(values))  # validates the largest value against the config
        self.qmodel, self.cfg, self.sigmas = qmodel, cfg, tuple(values)
        self.chips_per_sigma, self.seed = int(chips_per_sigma), int(seed)
        self.calibration, self.noise_source, self.cache_size = calibration, noise_source, int(cache_size)
        self._cache: OrderedDict[int, Chip] = OrderedDict()

    @classmethod
    def from_range(cls, qmodel: nn.Module, cfg: CIMConfig, low: float, high: float, num: int, **kwargs: object) -> ChipPool:
        """A pool over ``num`` evenly spaced sigma values from ``low`` to ``high`` (inclusive)."""
        if not is_integer(num) or num < 1:
            raise ValueError(f"num={num!r} is not allowed: expected an integer >= 1")
        return cls(qmodel, cfg, list(np.linspace(low, high, int(num))), **kwargs)  # type: ignore[arg-type]

    def __len__(self) -> int:
        return len(self.sigmas) * self.chips_per_sigma

    def _check(self, i: int) -> int:
        if not is_integer(i):
            raise TypeError(f"chip index {i!r} is not allowed: expected an integer")
        if not -len(self) <= i < len(self):
            raise IndexError(f"chip index {i!r} out of range for a pool of {len(self)} chips")
        return int(i) % len(self)

    def chip_index(self, sigma_index: int, chip_number: int) -> int:
        """Pool index of chip ``chip_number`` at ``sigmas[sigma_index]``."""
        if not 0 <= sigma_index < len(self.sigmas) or not 0 <= chip_number < self.chips_per_sigma:
            raise IndexError(f"(sigma_index, chip_number)=({sigma_index}, {chip_number}) out of range "
                             f"({len(self.sigmas)} sigmas x {self.chips_per_sigma} chips)")
        return int(sigma_index) * self.chips_per_sigma + int(chip_number)

    def locate(self, ids: object) -> tuple[np.ndarray, np.ndarray]:
        """(sigma index, chip number) of every pool index in ``ids`` (an int or an integer array), vectorized."""
        array = np.asarray(ids)
        if array.dtype.kind not in "iu" or ((array < 0) | (array >= len(self))).any():
            raise IndexError(f"chip indices {ids!r} out of range for a pool of {len(self)} chips (integers in "
                             f"[0, {len(self) - 1}])")
        return array // self.chips_per_sigma, array % self.chips_per_sigma

    def indices(self, sigma_indices: object, chip_numbers: object) -> np.ndarray:
        """Pool index of every (sigma index, chip number) pair, vectorized :meth:`chip_index` (broadcasts)."""
        s, c = np.broadcast_arrays(np.asarray(sigma_indices), np.asarray(chip_numbers))
        if (s.dtype.kind not in "iu" or c.dtype.kind not in "iu" or ((s < 0) | (s >= len(self.sigmas))).any()
                or ((c < 0) | (c >= self.chips_per_sigma)).any()):
            raise IndexError(f"(sigma_index, chip_number)=({sigma_indices!r}, {chip_numbers!r}) out of range "
                             f"({len(self.sigmas)} sigmas x {self.chips_per_sigma} chips)")
        return (s * self.chips_per_sigma + c).astype(np.int64)

    def sigma_index_of(self, i: int) -> int:
        return self._check(i) // self.chips_per_sigma

    def sigma_of(self, i: int) -> float:
        return self.sigmas[self.sigma_index_of(i)]

    def seed_of(self, i: int) -> int:
        i = self._check(i)
        return pool_seed(self.seed, i // self.chips_per_sigma, i % self.chips_per_sigma)

    def __getitem__(self, i: int) -> Chip:
        i = self._check(i)
        chip = self._cache.get(i)
        if chip is not None:
            self._cache.move_to_end(i)
            return chip
        chip = program(self.qmodel, self.cfg, self.sigma_of(i), self.seed_of(i), self.calibration, self.noise_source)
        self._cache[i] = chip
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return chip

    def __iter__(self) -> Iterator[Chip]:
        for i in range(len(self)):
            yield self[i]

    def indices_of_sigma(self, sigma_index: int) -> list[int]:
        return [self.chip_index(sigma_index, c) for c in range(self.chips_per_sigma)]

    def __repr__(self) -> str:
        return (f"ChipPool(sigmas={list(self.sigmas)}, chips_per_sigma={self.chips_per_sigma}, seed={self.seed}, "
                f"noise_source={self.noise_source!r}, cache_size={self.cache_size})")
