"""The one rule for a ``device`` setting: "auto" is CUDA when present, else the CPU; a device that is not there is an
error, never a silent fallback."""

from __future__ import annotations

import torch


def pick_device(name: str) -> torch.device:
    """``"auto"`` (CUDA when available, else CPU) or a torch device string; an unknown or absent device is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as exc:
        raise ValueError(f"device={name!r} is not allowed: expected 'auto', 'cpu', 'cuda' or 'cuda:N' ({exc})") from exc
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0 or (device.index or 0) >= count:
            raise ValueError(f"device={name!r} is not allowed: this machine has {count} CUDA device(s)")
    elif device.type != "cpu":
        raise ValueError(f"device={name!r} is not allowed: expected 'auto', 'cpu', 'cuda' or 'cuda:N'")
    return device
