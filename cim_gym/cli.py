"""Argument types shared by the command lines (``train_agent.py``, ``evaluate.py``); light: no torch, no models."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any


def existing_folder(text: str) -> str:
    """An existing folder, as an absolute path (recorded, so that a run or a sweep finds it from anywhere)."""
    path = Path(text).expanduser()
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is not allowed: expected an existing folder")
    return str(path.resolve())


def cim_spec(text: str) -> str | dict[str, Any]:
    """``--cim``: a preset name, or a JSON object (a full CIMConfig dict or ``{"preset": name, **overrides}``)."""
    if not text.lstrip().startswith("{"):
        return text
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"{text!r} is not valid JSON: {err}") from err
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"{text!r} is not allowed: expected a preset name or a JSON object")
    return value


def cim_label(spec: str | dict[str, Any]) -> str:
    """A short name of a chip for folder names: the preset, then each override as ``<field><value>`` in key order,
    e.g. ``{"preset": "ideal", "adc_bits": 5}`` -> ``ideal-adc_bits5`` (a dict without a preset starts ``custom``)."""
    if isinstance(spec, str):
        return spec
    rest = {k: v for k, v in spec.items() if k != "preset"}
    parts = [str(spec.get("preset", "custom"))] + [f"{k}{json.dumps(v, sort_keys=True)}" for k, v in sorted(rest.items())]
    return re.sub(r"[^A-Za-z0-9_.=-]+", "", "-".join(parts))
