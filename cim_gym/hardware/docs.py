"""Print the hardware model's documentation tables (Markdown), computed by the package itself::

    python -m cim_gym.hardware.docs            # settings, presets, sigma tables, energy table
"""

from __future__ import annotations

from cim_gym.hardware.config import NOISE_SOURCES, config_fields_table
from cim_gym.hardware.costs import energy_table_markdown
from cim_gym.hardware.presets import PRESETS, get_preset, presets_table
from cim_gym.hardware.sigma import clipped_share, weight_noise_std

__all__ = ["clipped_tables", "main", "markdown", "noise_sources_table", "sigma_tables"]

# (config label, preset, changes, sigma) rows of the finite-sigma table: each noisy preset at its own sigma, and
# the "absolute" PCM model at a small sigma where clipping already matters
CLIPPED_ROWS = (("`rram`", "rram", {}, 0.05), ("`pcm`", "pcm", {}, 0.01), ("`pcm`", "pcm", {}, 0.04),
                ("`neurosim`", "neurosim", {}, 0.2), ("neurosim + variation='absolute'", "neurosim",
                                                      {"variation": "absolute"}, 0.05))

NOISE_SOURCE_NOTES: dict[str, tuple[str, str, str]] = {  # source -> (what, formula, where the model comes from)
    "programming": ("device-to-device variation of every cell, drawn once per chip",
                    "relative G' = G (1 + sigma N); absolute G' = G + sigma G_max N; then G' >= 0",
                    "NeuroSim V1.3 (relative); aihwkit PCMLikeNoiseModel (absolute)"),
    "read": ("cycle-to-cycle noise of every cell, per read (image, output position, input bit)",
             "G'' = G (1 + r N); a partial sum gains r sqrt(sum_i x_i^2 G_i^2) N",
             "aihwkit read noise; NeuroSim"),
    "output": ("additive noise on each analog layer's output", "y + s (max - min)_calibrated N",
               "Yang & Sze, IEDM 2019"),
    "input": ("word-line (DAC) noise on every applied input value, per read, shared by the row's columns",
              "x' = x + e x_max N (x_max = 1 for a bit-serial pulse)", "aihwkit IOParameters.inp_noise"),
    "adc_offset": ("offset of every ADC (one per sub-array column), drawn once per chip; needs an ADC",
                   "code = round(c + o), o ~ N(0, std^2) LSB", "CrossSim (comparator mismatch)"),
    "adc_gain": ("gain error of every ADC, drawn once per chip; needs an ADC",
                 "code = round(c (1 + g / (2^b - 1))), g ~ N(0, std^2) LSB at full scale",
                 "CrossSim (capacitor mismatch)"),
    "stuck_at_gmin": ("share of cells stuck at G_min, drawn once per chip", "u = 0 whatever was programmed",
                      "stuck-at faults of NeuroSim V1.5 and RRAM fault studies"),
    "stuck_at_gmax": ("share of cells stuck at G_max, drawn once per chip", "u = 2^c - 1 whatever was programmed",
                      "stuck-at faults of NeuroSim V1.5 and RRAM fault studies"),
}


def markdown() -> str:
    parts = ["### Settings (`CIMConfig`)", config_fields_table(), "### Presets", presets_table(),
             "### Noise sources (`NOISE_SOURCES`: what a study's or an environment's sigma sets)", noise_sources_table(),
             "### What sigma means: std of the effective normalized weight per unit sigma", sigma_tables(),
             "### At a finite sigma: clipping at G >= 0 (std / sigma, and the share of the weight's cells clipped)",
             clipped_tables()]
    parts += ["### Energy and latency per operation (`EnergyTable()`)", energy_table_markdown()]
    return "\n\n".join(parts)


def sigma_tables(weights: tuple[float, ...] = (-1.0, -0.5, 0.0, 0.5, 1.0)) -> str:
    """One row per distinct device setting among the presets (and the differential/absolute variants)."""
    rows: dict[tuple, list[str]] = {}
    cfgs = {name: get_preset(name) for name in PRESETS}
    base = get_preset("neurosim")
    cfgs["neurosim + mapping='differential'"] = base.replace(mapping="differential")
    cfgs["neurosim + variation='absolute'"] = base.replace(variation="absolute")
    for name, cfg in cfgs.items():
        key = (cfg.mapping, cfg.variation, cfg.weight_bits, cfg.cell_bits, cfg.onoff_ratio)
        rows.setdefault(key, []).append(name)
    out = ["| config | mapping, variation, bits/cell, on/off | " + " | ".join(f"w={w:+.1f}" for w in weights) + " |",
           "| --- | --- |" + " --- |" * len(weights)]
    for (mapping, variation, wb, cb, R), names in rows.items():
        cfg = base.replace(mapping=mapping, variation=variation, weight_bits=wb, cell_bits=cb, onoff_ratio=R)
        std = weight_noise_std(cfg, list(weights))
        out.append(f"| {', '.join(f'`{n}`' if ' ' not in n else n for n in names)} | {mapping}, {variation}, {wb}/{cb}, "
                   f"{R:g} | " + " | ".join(f"{float(v):.3f}" for v in std) + " |")
    return "\n".join(out)


def noise_sources_table() -> str:
    """Every noise source, the ``CIMConfig`` field it sets (``NOISE_SOURCES``) and what it models."""
    rows = ["| noise source | field | what it is | formula | source |", "| --- | --- | --- | --- | --- |"]
    for source, field in NOISE_SOURCES.items():
        what, formula, origin = NOISE_SOURCE_NOTES[source]
        rows.append(f"| `{source}` | `{field}` | {what} | `{formula}` | {origin} |")
    return "\n".join(rows)


def clipped_tables(weights: tuple[float, ...] = (-1.0, -0.5, 0.0, 0.5, 1.0)) -> str:
    """Per row of ``CLIPPED_ROWS``: ``weight_noise_std(cfg, w, sigma=sigma)`` and ``clipped_share`` at each w."""
    out = ["| config | sigma | " + " | ".join(f"w={w:+.1f}" for w in weights) + " |",
           "| --- | --- |" + " --- |" * len(weights)]
    for label, preset, changes, sigma in CLIPPED_ROWS:
        cfg = get_preset(preset).replace(**changes)
        std = weight_noise_std(cfg, list(weights), sigma=sigma)
        share = clipped_share(cfg, list(weights), sigma)
        out.append(f"| {label} | {sigma:g} | " + " | ".join(f"{float(v):.3f} ({100 * float(c):.0f} %)"
                                                           for v, c in zip(std, share)) + " |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    import argparse

    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args(argv)
    print(markdown())


if __name__ == "__main__":
    main()
