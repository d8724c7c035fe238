"""The sigma table of the shipped checkpoints runs on the sweep engine and writes its CSV and Markdown."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from cim_gym.evaluation.sigma_table import main
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
