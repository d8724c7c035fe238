"""The depth x noise study script runs end to end on the shipped digits backbones and writes its CSV and PNG."""

import csv
from pathlib import Path

import pytest

from cim_gym.evaluation.noise_study import main, markdown, table_at


def test_noise_study_writes_csv_and_png(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "study"
    main(["--dataset", "digits", "--depths", "8", "14", "--chips", "2", "--images", "100", "--images-exact", "40",
          "--programming-levels", "0", "0.1", "--read-levels", "0", "0.05", "--output-levels", "0", "0.05",
          "--adc-levels", "8", "5", "--out", str(out)])
    rows = list(csv.DictReader(open(out.with_suffix(".csv"))))
    assert out.with_suffix(".png").stat().st_size > 1000
    assert {r["source"] for r in rows} == {"programming", "read", "output", "adc"}
    assert {r["depth"] for r in rows} == {"8", "14"} and {r["recipe"] for r in rows} == {"standard"}
    printed = capsys.readouterr().out
    assert "| backbone | 0 | 0.1 |" in printed and "| ResNet-14 |" in printed  # a Markdown table per source
    # zero noise and ADC points are deterministic: one chip; noisy points: one row per chip
    noisy = [r for r in rows if r["source"] == "programming" and float(r["level"]) > 0 and r["depth"] == "8"]
    assert sorted(r["chip_seed"] for r in noisy) == ["0", "1"]
    clean = [r for r in rows if r["source"] == "programming" and float(r["level"]) == 0]
    assert all(float(r["accuracy"]) > 90 for r in clean)


def test_the_tables_tell_recipes_apart_and_read_older_csvs() -> None:
    rows = [{"source": "programming", "depth": d, "recipe": r, "level": lv, "accuracy": acc, "n_images": 100}
            for d, r, accs in ((20, "standard", (90, 80)), (20, "no-stochastic-depth", (91, 60)))
            for lv, acc in zip((0.0, 0.1), accs)]
    rows.append({"source": "programming", "depth": 20, "recipe": "no-stochastic-depth", "level": 0.1, "accuracy": 70,
                 "n_images": 100})  # a second chip
    rows += [{"source": "adc", "depth": 8, "level": 5, "accuracy": 50.0, "n_images": 30}]  # no recipe column
    text = markdown(rows)
    assert "| ResNet-20 | 90.0 | 80.0 |" in text and "| ResNet-20 (no-stochastic-depth) | 91.0 | 65.0 |" in text
    assert "over 2 chips per point" in text and "| ResNet-8 | 50.0 |" in text and "one chip per point" in text


def test_the_table_at_points_has_a_row_per_backbone_and_dashes_where_a_point_is_missing() -> None:
    rows = [{"source": "programming", "depth": 20, "recipe": r, "level": lv, "accuracy": acc, "n_images": 100}
            for r, accs in (("standard", (90, 50, 40)), ("seed1", (91, 60, 70))) for lv, acc in zip((0, 0.1, 0.1), accs)]
    rows.append({"source": "adc", "depth": 20, "recipe": "standard", "level": 5, "accuracy": 70, "n_images": 30})
    text = table_at(rows, [("programming", 0.1), ("adc", 5.0)])
    assert "| backbone | clean | programming 0.1 | adc 5 |" in text
    assert "| ResNet-20 | 90.0 | 45.0 | 70.0 |" in text and "| ResNet-20 (seed1) | 91.0 | 65.0 | - |" in text


@pytest.mark.parametrize("argv, named", [
    (["--chips", "0"], "--chips 0"), (["--images", "-1"], "--images -1"),
    (["--programming-levels", "0", "-0.1"], "--programming-levels -0.1"), (["--adc-levels", "4.5"], "--adc-levels 4.5"),
    (["--dataset", "digits", "--recipes", "seed7"], "recipe 'seed7'"),
    (["--dataset", "digits", "--recipes", "sometimes"], "recipe='sometimes'"),
    (["--at", "programming"], "--at 'programming'"), (["--at", "drift=0.1"], "--at 'drift=0.1'"),
    (["--at", "read=-1"], "--at 'read=-1'"),
])
def test_bad_options_are_named_before_anything_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                    argv: list[str], named: str) -> None:
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--out", str(tmp_path / "study")])
    assert exc.value.code == 2 and named in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_reuse_copies_matching_points_and_measures_the_rest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import cim_gym.hardware.chip as chip_module

    common = ["--dataset", "digits", "--depths", "8", "--sources", "programming", "--images", "60",
              "--programming-levels", "0", "0.1"]
    first = tmp_path / "first"
    main([*common, "--chips", "2", "--out", str(first)])
    before = {(r["level"], r["chip_seed"]): r for r in csv.DictReader(open(first.with_suffix(".csv")))}
    assert len(before) == 3 and all(len(r["backbone_sha256"]) == 16 for r in before.values())

    programmed: list[int] = []
    real_program = chip_module.program
    monkeypatch.setattr(chip_module, "program", lambda *a, **k: programmed.append(k["seed"]) or real_program(*a, **k))
    second = tmp_path / "second"
    main([*common, "--chips", "3", "--reuse", str(first.with_suffix(".csv")), "--out", str(second)])
    after = {(r["level"], r["chip_seed"]): r for r in csv.DictReader(open(second.with_suffix(".csv")))}
    assert programmed == [2]  # only the new chip is measured
    assert all(after[k]["accuracy"] == r["accuracy"] for k, r in before.items())

    programmed.clear()  # a different setting (image count) is a different point: nothing reused
    main([*common[:6], "--images", "50", *common[8:], "--chips", "1", "--reuse", str(second.with_suffix(".csv")),
          "--out", str(tmp_path / "third")])
    assert programmed == [0, 0]


def test_reuse_of_a_missing_file_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--dataset", "digits", "--reuse", str(tmp_path / "nope.csv"), "--out", str(tmp_path / "s")])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "--reuse" in err and "nope.csv" in err and not (tmp_path / "s.csv").exists()


def test_reuse_with_replot_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "earlier.csv").write_text("dataset\n")
    with pytest.raises(SystemExit) as exc:
        main(["--replot", "--reuse", str(tmp_path / "earlier.csv"), "--out", str(tmp_path / "s")])
    assert exc.value.code == 2 and "--reuse is not allowed with --replot" in capsys.readouterr().err
