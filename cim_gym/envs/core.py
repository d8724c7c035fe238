"""The part every environment shares: backbone, images, frozen feature encoder, chip pool, costs and rewards.

One decision per episode, so a batch of episodes is just a batch of (image, chip, action) triples:
:meth:`EnvCore.run` executes one such batch in one forward per distinct chip. The single environments call it with
a batch of one, the vector environments with a batch of N, so both give the same numbers.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from cim_gym.devices import pick_device
from cim_gym.envs.config import EnvConfig


def _one_thread_after_fork() -> None:
    # A forked worker (Gymnasium's AsyncVectorEnv forks by default) that enters the OpenMP pool its parent already
    # used hangs forever; with one thread torch never enters it. The processes are the parallelism there anyway.
    torch.set_num_threads(1)


os.register_at_fork(after_in_child=_one_thread_after_fork)


def resolve_cim(spec: str | dict[str, Any]) -> Any:
    """A ``CIMConfig`` from a preset name or a dict (a full config, or ``{"preset": name, **overrides}``)."""
    from cim_gym.hardware import CIMConfig, get_preset

    if isinstance(spec, str):
        return get_preset(spec)
    spec = dict(spec)
    if "preset" in spec:
        return get_preset(spec.pop("preset")).replace(**spec)
    return CIMConfig.from_dict(spec)


SIGMA_MATCH_RTOL = 1e-6
"""A pinned sigma matches a grid value within this relative tolerance (float32 carries about 7 digits)."""


@dataclass
class Outcome:
    """What a batch of episodes produced, one entry per episode (numpy arrays)."""

    prediction: np.ndarray
    label: np.ndarray
    correct: np.ndarray
    path: np.ndarray
    """The block mask (B, K) or the exit (B,) each episode took."""
    usage: np.ndarray
    macs: np.ndarray
    energy_pj: np.ndarray
    latency_ns: np.ndarray
    reward: np.ndarray
    extras: dict[str, np.ndarray]
    """Per-episode arrays an action type adds (the threshold action: ``exit_entropy``, (B, E-1))."""


class EnvCore:
    """Backbone, data, features, chips and costs of one environment configuration.

    :param config: the environment settings.
    :param variant: the backbone variant the action needs ("blockdrop" or "multiexit").
    :param default_depth: depth used when ``config.depth`` is None.
    """

    def __init__(self, config: EnvConfig, variant: str, default_depth: int) -> None:
        from cim_gym.backbones import load_backbone
        from cim_gym.data import load_dataset
        from cim_gym.hardware import calibrate

        self.config = config
        self.device = pick_device(config.device)
        self.backbone = load_backbone(config.dataset, depth=config.depth or default_depth, variant=variant,
                                      **config.backbone_kwargs)
        self.model = self.backbone.model.to(self.device).eval()
        self.cim = resolve_cim(config.cim)
        self._check_bits()
        data = load_dataset(config.dataset, config.data_root, download=False)  # an environment never downloads
        self.info = data.info
        split = data.split(config.split)
        self.images = split.images.to(self.device)
        self.labels = split.labels.to(self.device)
        self.sigmas = config.sigma_grid
        for name in ("calibration_images", "probe_images"):
            if getattr(config, name) > len(data.train.labels):
                raise ValueError(f"{name}={getattr(config, name)} is not allowed: the {config.dataset!r} training "
                                 f"split has {len(data.train.labels)} images (expected 1 to {len(data.train.labels)})")
        self.calibration = calibrate(self.model, self.cim, data.train.images[: config.calibration_images].to(self.device))
        # The chip descriptor's probe batch: training images only, whatever split the episodes draw from. Kept even
        # when this environment does not observe the chip (a few KB), so that views with observe_chip work.
        self._probe_batch = (data.train.images[: config.probe_images].to(self.device),
                             data.train.labels[: config.probe_images].to(self.device))
        self._probe: Any = None
        self._descriptors: dict[int, np.ndarray] = {}
        self._features = torch.zeros(len(self.labels), 0, device=self.device)
        self._have_features = torch.zeros(len(self.labels), dtype=torch.bool, device=self.device)
        self.pool: Any = None
        self.pool_seed: int | None = None

    def _check_bits(self) -> None:
        trained = self.backbone.quant_config
        for name in ("weight_bits", "input_bits"):
            mine, theirs = getattr(self.cim, name), getattr(trained, name)
            if mine != theirs:
                raise ValueError(
                    f"cim.{name}={mine} does not match the backbone {self.backbone.name!r}, trained with {name}={theirs}"
                )

    # ---- chips ------------------------------------------------------------------------------------------------
    def make_pool(self, seed: int) -> None:
        """(Re)build the chip pool from ``seed``; chips are programmed lazily, on first use."""
        from cim_gym.hardware import ChipPool

        self.pool_seed = int(seed)
        self.pool = ChipPool(
            self.model,
            self.cim,
            sigmas=self.sigmas,
            chips_per_sigma=self.config.chips_per_sigma,
            seed=self.pool_seed,
            calibration=self.calibration,
            noise_source=self.config.noise_source,
            cache_size=len(self.sigmas) * self.config.chips_per_sigma,
        )
        self._descriptors = {}

    @property
    def num_chips(self) -> int:
        """Chips in the pool: every sigma times ``chips_per_sigma``."""
        return len(self.sigmas) * self.config.chips_per_sigma

    def chip_sigma(self, chip_ids: np.ndarray) -> np.ndarray:
        """The sigma of each chip (float64, as configured); the pool owns the id arithmetic."""
        return np.asarray(self.pool.sigmas, dtype=np.float64)[self.pool.locate(np.asarray(chip_ids))[0]]

    # ---- the chip descriptor ----------------------------------------------------------------------------------
    @property
    def descriptor_dim(self) -> int:
        """Entries of the chip descriptor: K block errors, then E exit accuracies and E exit entropies."""
        return int(self.model.num_blocks) + 2 * int(getattr(self.model, "num_exits", 1))

    @property
    def probe(self) -> Any:
        """The post-programming test (:class:`~cim_gym.envs.descriptor.ChipProbe`), built on first use."""
        if self._probe is None:
            from cim_gym.envs.descriptor import ChipProbe

            images, labels = self._probe_batch
            self._probe = ChipProbe(self.model, images, labels, self.info.num_classes)
        return self._probe

    def chip_descriptors(self, chip_ids: np.ndarray) -> np.ndarray:
        """Descriptors (B, D) float32 of the chips ``chip_ids``; each is computed once per chip and cached with the
        pool (a new pool, a new cache)."""
        from cim_gym.envs.descriptor import describe_chips

        return describe_chips(self.probe, self.pool, np.asarray(chip_ids), self._descriptors)

    def sigma_index(self, sigma: float) -> int:
        """Index of a pinned ``sigma`` in the grid, or a ValueError saying what the grid is. A value matches a grid
        point to float32 precision, so the observed ``sigma`` (float32) pins its own group."""
        lo, hi = self.sigmas[0], self.sigmas[-1]
        tol = SIGMA_MATCH_RTOL * max(1.0, abs(sigma))
        if not lo - tol <= sigma <= hi + tol:
            raise ValueError(f"sigma={sigma!r} is outside the configured range [{lo}, {hi}]")
        gaps = [abs(s - sigma) for s in self.sigmas]
        best = int(np.argmin(gaps))
        if gaps[best] > SIGMA_MATCH_RTOL * max(1.0, abs(self.sigmas[best])):
            raise ValueError(f"sigma={sigma!r} is not one of the configured sigmas {list(self.sigmas)}")
        return best

    # ---- observations -----------------------------------------------------------------------------------------
    @property
    def _feature_reader(self) -> Any:
        """The quantized layer that reads the first stage's output (the first conv of the second stage)."""
        return self.model.blocks[self.model.stage_starts[1]].conv1

    def encode(self, x: Tensor) -> Tensor:
        """The frozen digital encoder: the clean backbone's stem and first stage, as the next layer reads them
        (quantized to ``input_bits`` on its calibrated range ``[0, r]``), global-average-pooled; shape (B, 16)."""
        m = self.model
        h = m.run_blocks(m.stem(x), None, 0, m.stage_starts[1])
        return self._feature_reader.quant_input(h).mean(dim=(2, 3))

    @property
    def feature_bounds(self) -> tuple[float, float]:
        r = float(self._feature_reader.input_range)
        return (-r if bool(self._feature_reader.signed_input) else 0.0, r)

    def features(self, image_ids: np.ndarray) -> Tensor:
        """Features of the given images, computed once per image (lazily) and cached."""
        ids = torch.as_tensor(np.asarray(image_ids), device=self.device)
        missing = ids[~self._have_features[ids]].unique()
        if missing.numel():
            with torch.no_grad():
                feats = self.encode(self.images[missing])
            if self._features.shape[1] == 0:
                self._features = torch.zeros(len(self.labels), feats.shape[1], device=self.device)
            self._features[missing] = feats
            self._have_features[missing] = True
        return self._features[ids]

    @property
    def feature_dim(self) -> int:
        return int(self.features(np.array([0])).shape[1])

    def observe(self, image_ids: np.ndarray, chip_ids: np.ndarray) -> dict[str, np.ndarray]:
        """Batched observation dict for these episodes."""
        if self.config.obs_mode == "features":
            obs = {"features": self.features(image_ids).cpu().numpy().astype(np.float32)}
        else:
            obs = {"image": self.images[torch.as_tensor(np.asarray(image_ids))].cpu().numpy().astype(np.float32)}
        if self.config.observe_sigma:
            obs["sigma"] = self.chip_sigma(chip_ids).astype(np.float32)[:, None]
        if self.config.observe_chip:
            obs["chip"] = self.chip_descriptors(chip_ids)
        return obs

    # ---- execution --------------------------------------------------------------------------------------------
    def run(self, image_ids: np.ndarray, chip_ids: np.ndarray, act: Any, actions: np.ndarray) -> Outcome:
        """Run each episode's image on its chip with its (validated) action, one forward per distinct chip.

        :param act: the action type: ``act.forward(chip, images, actions) -> (predictions, paths, extras)`` for
            episodes that share a chip, ``act.cost(paths) -> (B, 4)`` usage, MACs, energy pJ, latency ns.
        """
        image_ids, chip_ids = np.asarray(image_ids), np.asarray(chip_ids)
        prediction = np.empty(len(image_ids), dtype=np.int64)
        paths: np.ndarray | None = None
        extras: dict[str, np.ndarray] = {}
        with torch.no_grad():
            for chip_id in np.unique(chip_ids):
                rows = np.flatnonzero(chip_ids == chip_id)
                x = self.images[torch.as_tensor(image_ids[rows], device=self.device)]
                pred, path, extra = act.forward(self.pool[int(chip_id)], x, actions[rows])
                prediction[rows] = pred.cpu().numpy()
                if paths is None:
                    paths = np.empty((len(image_ids), *path.shape[1:]), dtype=path.dtype)
                paths[rows] = path
                for key, value in extra.items():
                    if key not in extras:
                        extras[key] = np.empty((len(image_ids), *value.shape[1:]), dtype=value.dtype)
                    extras[key][rows] = value
        assert paths is not None
        labels = self.labels[torch.as_tensor(image_ids, device=self.device)].cpu().numpy()
        correct = prediction == labels
        usage, macs, energy, latency = act.cost(paths).T
        reward = self.reward(correct, usage, energy / act.full[1])
        return Outcome(prediction, labels, correct, paths, usage, macs, energy, latency, reward, extras)

    def reward(self, correct: np.ndarray, usage: np.ndarray, energy_fraction: np.ndarray) -> np.ndarray:
        cfg = self.config
        if cfg.reward == "blockdrop":
            r = np.where(correct, 1.0 - usage**2, -cfg.penalty)
        else:
            r = np.where(correct, 1.0, -cfg.penalty)
            if cfg.reward == "energy":
                r = r - cfg.energy_price * energy_fraction
        return r.astype(np.float64)
