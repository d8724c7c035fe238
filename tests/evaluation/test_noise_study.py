"""The depth x noise study script runs end to end on the shipped digits backbones and writes its CSV and PNG."""

import csv
from pathlib import Path

from cim_gym.evaluation.noise_study import main


def test_noise_study_writes_csv_and_png(tmp_path: Path) -> None:
    out = tmp_path / "study"
    main(["--dataset", "digits", "--depths", "8", "14", "--chips", "2", "--images", "100", "--images-exact", "40",
          "--programming-levels", "0", "0.1", "--read-levels", "0", "0.05", "--output-levels", "0", "0.05",
          "--adc-levels", "8", "5", "--out", str(out)])
    rows = list(csv.DictReader(open(out.with_suffix(".csv"))))
    assert out.with_suffix(".png").stat().st_size > 1000
    assert {r["source"] for r in rows} == {"programming", "read", "output", "adc"}
    assert {r["depth"] for r in rows} == {"8", "14"}
    # zero noise and ADC points are deterministic: one chip; noisy points: one row per chip
    noisy = [r for r in rows if r["source"] == "programming" and float(r["level"]) > 0 and r["depth"] == "8"]
    assert sorted(r["chip_seed"] for r in noisy) == ["0", "1"]
    clean = [r for r in rows if r["source"] == "programming" and float(r["level"]) == 0]
    assert all(float(r["accuracy"]) > 90 for r in clean)
