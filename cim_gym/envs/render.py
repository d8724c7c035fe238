"""Pictures of episodes: what ``render_mode="rgb_array"`` returns and ``"human"`` shows.

A frame shows the input image, the chip (id, sigma, noise source), the path the chip took (the blocks that ran,
or the exit, with each exit's entropy against its threshold for the threshold environment), the prediction
against the label, and the MACs and energy spent. Before the decision (right after ``reset``) the path part says
so. Frames are drawn with Pillow only when asked for; an environment without a render mode never builds one.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

RENDER_MODES = ("rgb_array", "human")
WIDTH, HEIGHT = 640, 288
"""Frame size in pixels (even, as video codecs want)."""

_BG, _INK, _MUTED = (250, 250, 250), (30, 30, 30), (150, 150, 150)
_RAN, _SKIPPED, _GOOD, _BAD, _EXIT = (64, 110, 190), (225, 225, 225), (30, 140, 60), (200, 50, 40), (230, 140, 20)


def check_render_mode(render_mode: str | None) -> str | None:
    """Validate a ``render_mode``: None, "rgb_array", or "human" where a display exists."""
    if render_mode is not None and render_mode not in RENDER_MODES:
        raise ValueError(f"render_mode={render_mode!r} is not allowed: expected None or one of {RENDER_MODES}")
    if render_mode == "human" and not has_display():
        raise ValueError("render_mode='human' is not allowed here: no display (DISPLAY / WAYLAND_DISPLAY unset); "
                         "use render_mode='rgb_array' (e.g. with gymnasium.wrappers.RecordVideo)")
    return render_mode


def has_display() -> bool:
    """Whether a window can be shown: always on macOS and Windows, with an X or Wayland display elsewhere."""
    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def available_render_modes() -> list[str]:
    """The render modes that work on this machine: "rgb_array" always, "human" where a display exists."""
    return ["rgb_array", "human"] if has_display() else ["rgb_array"]


@dataclass(frozen=True)
class Decision:
    """What one finished episode did, as the frame shows it."""

    path: np.ndarray
    """The block mask (K,) or the exit taken (a 0-d array)."""
    prediction: int
    label: int
    macs: float
    usage: float
    energy_pj: float
    exit_entropy: np.ndarray | None = None
    """Entropy (nats) at each early exit, threshold environment only."""
    thresholds: np.ndarray | None = None
    """The entropy thresholds (nats) the action set, threshold environment only."""


def _font(size: int) -> Any:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one bitmap size
        return ImageFont.load_default()


class EpisodeRenderer:
    """Draws frames of one environment's episodes.

    :param title: the environment id shown at the top.
    :param core: the environment's :class:`~cim_gym.envs.core.EnvCore` (images, normalization, model layout).
    :param kind: "blocks" (a block mask), "exit" (an exit index) or "thresholds" (an exit chosen by entropy).
    """

    def __init__(self, title: str, core: Any, kind: str) -> None:
        if kind not in ("blocks", "exit", "thresholds"):
            raise ValueError(f"kind={kind!r} is not allowed: expected 'blocks', 'exit' or 'thresholds'")
        self.title, self.core, self.kind = title, core, kind
        model = core.model
        self.num_blocks = int(model.num_blocks)
        self.stage_starts = tuple(int(s) for s in model.stage_starts)
        self.exit_after = tuple(int(e) for e in getattr(model, "exit_after", ()))
        self.fonts = {size: _font(size) for size in (12, 14, 18)}
        self._figure: Any = None

    # ---- the picture ------------------------------------------------------------------------------------------
    def _image(self, image_id: int, side: int) -> Image.Image:
        info = self.core.info
        x = self.core.images[int(image_id)].detach().cpu().double().numpy()  # (C, H, W), normalized
        mean = np.asarray(info.mean, dtype=np.float64).reshape(-1, 1, 1)
        std = np.asarray(info.std, dtype=np.float64).reshape(-1, 1, 1)
        pixels = np.clip((x * std + mean) * 255.0 + 0.5, 0, 255).astype(np.uint8)
        array = pixels[0] if pixels.shape[0] == 1 else pixels.transpose(1, 2, 0)  # grey (H, W) or RGB (H, W, 3)
        return Image.fromarray(array).convert("RGB").resize((side, side), Image.NEAREST)

    def frame(self, image_id: int, chip_id: int, decision: Decision | None) -> np.ndarray:
        """An RGB frame (HEIGHT, WIDTH, 3) uint8 of one episode; ``decision`` None: not decided yet."""
        core = self.core
        canvas = Image.new("RGB", (WIDTH, HEIGHT), _BG)
        draw = ImageDraw.Draw(canvas)
        side = 176
        canvas.paste(self._image(image_id, side), (16, 44))
        draw.rectangle((15, 43, 16 + side, 44 + side), outline=_MUTED)
        draw.text((16, 12), self.title, fill=_INK, font=self.fonts[18])
        draw.text((16, 44 + side + 8), f"image #{int(image_id)} ({core.config.split})", fill=_MUTED, font=self.fonts[12])

        sigma = float(core.chip_sigma(np.array([chip_id]))[0])
        x0, y = 212, 46
        draw.text((x0, y), f"chip {int(chip_id)}   sigma {sigma:.4g} ({core.config.noise_source})", fill=_INK,
                  font=self.fonts[14])
        y += 26
        if decision is None:
            draw.text((x0, y), f"label {core.labels[int(image_id)].item()}   waiting for the action", fill=_MUTED,
                      font=self.fonts[14])
        else:
            right = decision.prediction == decision.label
            verdict = "correct" if right else "wrong"
            draw.text((x0, y), f"prediction {decision.prediction}   label {decision.label}   {verdict}",
                      fill=_GOOD if right else _BAD, font=self.fonts[14])
            y += 22
            draw.text((x0, y), f"{decision.macs / 1e6:.3f} M MACs ({decision.usage:.0%} usage), "
                               f"{decision.energy_pj / 1e3:.2f} nJ", fill=_INK, font=self.fonts[14])
        self._path(draw, x0, 150, decision)
        return np.asarray(canvas, dtype=np.uint8).copy()

    def _path(self, draw: ImageDraw.ImageDraw, x0: int, y0: int, decision: Decision | None) -> None:
        k = self.num_blocks
        gap = 6
        width = (WIDTH - x0 - 16 - gap * (len(self.stage_starts) - 1)) / k
        boxes = []
        for t in range(k):
            stage = sum(t >= s for s in self.stage_starts) - 1
            left = x0 + t * width + stage * gap
            boxes.append((left, left + width - 2))
        if self.kind == "blocks":
            ran = None if decision is None else np.asarray(decision.path).reshape(-1)
            caption = "blocks: waiting" if ran is None else f"blocks run: {int(ran.sum())} of {k}"
        else:
            exit_taken = None if decision is None else int(np.asarray(decision.path).reshape(()))
            last = None if exit_taken is None else self.exit_after[exit_taken]
            ran = None if last is None else (np.arange(k) <= last).astype(np.int8)
            caption = "exit: waiting" if exit_taken is None else f"exit taken: {exit_taken} (after block {last})"
        draw.text((x0, y0 - 22), caption, fill=_INK, font=self.fonts[14])
        for t, (left, right) in enumerate(boxes):
            fill = _SKIPPED if ran is None or not ran[t] else _RAN
            draw.rectangle((left, y0, right, y0 + 26), fill=fill, outline=_MUTED)
        if self.kind == "blocks":
            draw.text((x0, y0 + 32), "blue: block ran on the chip; grey: skipped (shortcut)", fill=_MUTED,
                      font=self.fonts[12])
            return
        for e, after in enumerate(self.exit_after):
            centre = (boxes[after][0] + boxes[after][1]) / 2
            chosen = decision is not None and e == int(np.asarray(decision.path).reshape(()))
            draw.line((centre, y0 + 27, centre, y0 + 42), fill=_EXIT if chosen else _MUTED, width=3 if chosen else 1)
            draw.ellipse((centre - 5, y0 + 40, centre + 5, y0 + 50), fill=_EXIT if chosen else _BG,
                         outline=_EXIT if chosen else _MUTED)
            label = f"exit {e}"
            if self.kind == "thresholds" and decision is not None and decision.exit_entropy is not None:
                if e < len(decision.exit_entropy):
                    label += f"\nH {decision.exit_entropy[e]:.2f}\nT {decision.thresholds[e]:.2f}"  # type: ignore[index]
                else:
                    label += "\n(final)"
            draw.multiline_text((centre - 22, y0 + 54), label, fill=_INK if chosen else _MUTED, font=self.fonts[12])

    # ---- a window ---------------------------------------------------------------------------------------------
    def show(self, frame: np.ndarray, fps: float) -> None:
        """Show a frame in a matplotlib window (render_mode="human")."""
        import matplotlib.pyplot as plt

        if self._figure is None or not plt.fignum_exists(self._figure[0].number):
            figure, axes = plt.subplots(figsize=(WIDTH / 100, HEIGHT / 100), dpi=100)
            axes.set_axis_off()
            figure.subplots_adjust(0, 0, 1, 1)
            self._figure = (figure, axes.imshow(frame))
            plt.show(block=False)
        else:
            self._figure[1].set_data(frame)
        plt.pause(1.0 / fps)

    def close(self) -> None:
        """Close the window, if one is open."""
        if self._figure is not None:
            import matplotlib.pyplot as plt

            plt.close(self._figure[0])
            self._figure = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_figure"] = None  # a window does not travel
        del state["fonts"]  # Pillow's built-in font cannot be pickled: made again on arrival
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.fonts = {size: _font(size) for size in (12, 14, 18)}
