"""The sigma table of the shipped checkpoints runs on the sweep engine and writes its CSV and Markdown."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from cim_gym.evaluation.sigma_table import main, sigma_table, standard_names
from cim_gym.hardware.pool import pool_seed


def test_sigma_table_writes_csv_and_markdown(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "table.csv"
    names = ["digits-resnet8-blockdrop", "digits-resnet32-multiexit"]
    assert main(["--name", *names, "--sigmas", "0", "0.1", "--chips", "2", "--images", "50", "--seed", "4",
                 "--no-progress", "--out", str(out)]) == 0
    table = capsys.readouterr().out
    assert table.startswith("| checkpoint | test images | sigma 0 | sigma 0.1 |")
    assert all(f"| {n} | 50 |" in table for n in names)
    rows = list(csv.DictReader(open(out)))
    assert len(rows) == len(names) * (1 + 2)  # sigma 0: one chip (nothing random); sigma 0.1: two
    noisy = [r for r in rows if float(r["sigma"]) == 0.1]
    # the sweep's chips: the same seeds for every checkpoint, from one ChipPool seed
    assert {(r["chip"], r["chip_seed"]) for r in noisy} == {(str(c), str(pool_seed(4, 1, c))) for c in range(2)}
    assert all(float(r["accuracy"]) > 90 for r in rows if float(r["sigma"]) == 0)


def test_unknown_checkpoint_is_refused(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        main(["--name", "digits-resnet99-blockdrop"])
    assert "unknown checkpoint" in capsys.readouterr().err


def test_a_recipe_variant_is_refused_not_swapped_for_the_standard_model(capsys: pytest.CaptureFixture) -> None:
    # the engine loads each depth's standard model: a variant's row would silently repeat the standard one's
    name = "fashion-mnist-resnet20-blockdrop-seed1"
    with pytest.raises(SystemExit):
        main(["--name", name])
    assert name in capsys.readouterr().err
    with pytest.raises(ValueError, match="recipe 'seed1'"):
        sigma_table([name], [0.0], chips=1, images=10, out=Path("unused.csv"))


def test_the_default_table_lists_standard_checkpoints_only() -> None:
    from cim_gym.backbones.shipped import SHIPPED

    names = standard_names("fashion-mnist")
    assert "fashion-mnist-resnet56-blockdrop" in names and "fashion-mnist-resnet32-multiexit" in names
    variants = {n for n in SHIPPED if n.startswith("fashion-mnist-") and n not in names}
    assert "fashion-mnist-resnet20-blockdrop-seed1" in variants  # the case this guards exists
    assert all(not n.endswith(("-seed1", "-stochastic-depth")) for n in names)
    assert all(n.startswith("digits-") for n in standard_names("digits"))
