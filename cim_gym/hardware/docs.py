"""Print the hardware model's documentation tables (Markdown), computed by the package itself::

    python -m cim_gym.hardware.docs            # settings, presets, sigma tables, energy table
"""

from __future__ import annotations

from cim_gym.hardware.config import config_fields_table
from cim_gym.hardware.costs import energy_table_markdown
from cim_gym.hardware.presets import PRESETS, get_preset, presets_table
from cim_gym.hardware.sigma import weight_noise_std

__all__ = ["main", "markdown", "sigma_tables"]


def markdown() -> str:
    parts = ["### Settings (`CIMConfig`)", config_fields_table(), "### Presets", presets_table(),
             "### What sigma means: std of the effective normalized weight per unit sigma", sigma_tables()]
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


def main(argv: list[str] | None = None) -> None:
    import argparse

    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args(argv)
    print(markdown())


if __name__ == "__main__":
    main()
