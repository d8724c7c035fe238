"""evaluate.py: help, a small sweep end to end, one line per missing run folder, and --workers without Ray."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import evaluate  # noqa: E402


def test_help_names_every_option(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        evaluate.parse_args(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr()
    for option in ("--sigma-grid", "--noise-source", "--cim", "--chips", "--images", "--seed", "--workers",
                   "--ray-address", "--policies", "--train-missing", "--out"):
        assert option in out.out


def test_small_sweep_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)  # no standard run folders here
    args = ["--sigma-grid", "0", "0.1", "--chips", "2", "--images", "40", "--depths", "8", "--mask-drops", "1",
            "--no-progress", "--out", "ev"]
    assert evaluate.main(args) == 0
    out = capsys.readouterr().out
    skipped = [line for line in out.splitlines() if line.startswith("skipped ")]
    assert len(skipped) == len(evaluate.LEARNED)
    assert all("python train_agent.py" in line and "--out runs/digits/" in line for line in skipped)
    assert "wrote ev/" in out
    config = json.loads((tmp_path / "ev" / "config.json").read_text())
    names = [m["name"] for m in config["sweep"]["methods"]]
    assert names == ["fixed-resnet8", "mask-resnet20-drop1per-stage", "branchynet-lenient-resnet32",
                     "branchynet-strict-resnet32"]
    assert config["command"].startswith("python evaluate.py --sigma-grid 0 0.1")
    assert len(config["skipped"]) == len(evaluate.LEARNED)
    assert "## Left out" in (tmp_path / "ev" / "summary.md").read_text()
    # the same command resumes: nothing is recomputed
    assert evaluate.main(args) == 0
    assert "12 of 12 cells resumed" in capsys.readouterr().out


def test_workers_without_ray_says_how_to_install(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now fails
    with pytest.raises(SystemExit):
        evaluate.parse_args(["--workers", "2"])
    assert 'pip install "cim-gym[ray]"' in capsys.readouterr().err


def test_train_commands_name_the_standard_folders() -> None:
    a = evaluate.parse_args(["--dataset", "fashion-mnist", "--noise-source", "read"])
    cmd = evaluate.train_command("blockdrop-ideal-lowpenalty", a, (0.0, 0.1))
    assert cmd[:2] == ["python", "train_agent.py"]
    assert cmd[cmd.index("--sigmas") + 1] == "0" and cmd[-1] == "runs/fashion-mnist-read-ideal/blockdrop-ideal-lowpenalty"
    noisy = evaluate.train_command("exit-nosigma", a, (0.0, 0.1), steps=500)
    assert noisy[noisy.index("--sigma-range") + 1:noisy.index("--sigma-range") + 3] == ["0", "0.1"]
    assert "--no-sigma" in noisy and noisy[-2:] == ["--steps", "500"]
    assert evaluate.mask_drops(20) == [1, 2] and evaluate.mask_drops(56) == [2, 4, 7]


def test_train_missing_runs_train_agent_with_a_small_budget(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    calls: list[list[str]] = []
    monkeypatch.setattr(evaluate.subprocess, "run", lambda cmd, check: calls.append(cmd))
    args = ["--sigma-grid", "0", "0.1", "--chips", "2", "--images", "20", "--depths", "8", "--mask-drops",
            "--exit-depth", "110", "--train-missing", "--train-steps", "4096", "--no-progress", "--out", "ev"]
    assert evaluate.main(args) == 0
    out = capsys.readouterr().out
    assert len(calls) == len(evaluate.LEARNED)
    assert all(Path(c[1]) == ROOT / "train_agent.py" and c[c.index("--steps") + 1] == "4096" for c in calls)
    assert out.count("with a small budget (4096 steps)") == len(evaluate.LEARNED)
    assert "skipped branchynet: no multi-exit ResNet-110" in out


def test_train_missing_finishes_an_interrupted_run_and_keeps_a_complete_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    calls: list[list[str]] = []
    monkeypatch.setattr(evaluate.subprocess, "run", lambda cmd, check: calls.append(cmd))
    root = Path("runs/digits")
    for name, status in (("blockdrop-bernoulli-sigma", "running"), ("blockdrop-bernoulli-nosigma", "complete")):
        (root / name).mkdir(parents=True)
        (root / name / "run.json").write_text(json.dumps({"status": status}))
    args = ["--sigma-grid", "0", "0.1", "--chips", "2", "--images", "20", "--depths", "8", "--exit-depth", "0",
            "--runs", "blockdrop-bernoulli-sigma", "blockdrop-bernoulli-nosigma", "blockdrop-bernoulli-chip",
            "--train-missing", "--train-steps", "4096", "--no-progress", "--out", "ev"]
    evaluate.main(args)
    out = capsys.readouterr().out
    resumed, fresh = ([c for c in calls if c[c.index("--out") + 1].endswith(n)]
                      for n in ("/blockdrop-bernoulli-sigma", "/blockdrop-bernoulli-chip"))
    assert len(calls) == 2 and "--resume" in resumed[0] and "--resume" not in fresh[0]
    assert "finishing interrupted blockdrop-bernoulli-sigma" in out and "training missing blockdrop-bernoulli-chip" in out


def test_readme_evaluate_commands_parse() -> None:
    import re

    commands = re.findall(r"^python evaluate\.py(.*?)\s*(?:#.*)?$", (ROOT / "README.md").read_text(), re.M)
    assert len(commands) >= 2
    for args in commands:
        evaluate.parse_args(args.split())


@pytest.mark.parametrize(("block", "summary"), [
    ("evaluation-digits", "benchmarks/results/evaluation_digits/summary.md"),
    ("results-fashion-mnist-programming", "results/fashion-mnist/programming/summary.md"),
    ("results-fashion-mnist-programming-exits", "results/fashion-mnist/programming-exits/summary.md"),
    ("results-fashion-mnist-output", "results/fashion-mnist/output/summary.md"),
])
def test_readme_result_tables_are_the_stored_results(block: str, summary: str) -> None:
    import re

    readme = (ROOT / "README.md").read_text()
    found = re.search(rf"<!-- {block}:start -->\n(.*?)\n<!-- {block}:end -->", readme, re.S)
    assert found, f"README.md has no {block} block"
    table = re.search(r"## Accuracy.*?\n\n(\|.*?)\n\n", (ROOT / summary).read_text(), re.S)
    assert table and table.group(1) in found.group(1), f"README {block} table differs from the stored {summary}"


def test_the_study_script_is_valid_bash_and_its_evaluate_options_exist() -> None:
    import re
    import subprocess

    script = ROOT / "scripts" / "fashion_mnist_study.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    options = set(re.findall(r"(--[a-z][a-z-]+)", script.read_text()))
    import train_agent

    known = {o for parser in (evaluate.build_parser(), train_agent.build_parser())
             for action in parser._actions for o in action.option_strings}
    assert options <= known, f"unknown options in the study script: {sorted(options - known)}"


def test_the_backbone_script_is_valid_bash_and_its_options_exist(capsys: pytest.CaptureFixture) -> None:
    import re
    import subprocess

    from cim_gym.backbones import shipped
    from cim_gym.evaluation import noise_study, sigma_table

    script = ROOT / "scripts" / "fashion_mnist_backbones.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    options = set(re.findall(r"(--[a-z][a-z-]+)", script.read_text()))
    for main, argv in ((shipped.main, ["train", "--help"]), (sigma_table.main, ["--help"]),
                       (noise_study.main, ["--help"])):
        with pytest.raises(SystemExit):
            main(argv)
    known = set(re.findall(r"(--[a-z][a-z-]+)", capsys.readouterr().out))
    assert options <= known, f"unknown options in the backbone script: {sorted(options - known)}"


@pytest.mark.parametrize("grid", [["0.1", "0"], ["0", "0"], ["-0.1", "0"], ["0", "nan"]])
def test_a_bad_grid_names_the_values(grid: list[str], capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        evaluate.parse_args(["--sigma-grid", *grid])
    assert "--sigma-grid" in capsys.readouterr().err


@pytest.mark.parametrize(("argv", "named"), [
    (["--dataset", "foo"], "--dataset foo"), (["--depths", "8", "9"], "--depths 8 9"),
    (["--blockdrop-depth", "10"], "--blockdrop-depth 10"), (["--exit-depth", "33"], "--exit-depth 33"),
    (["--mask-drops", "3"], "--mask-drops 3"), (["--mask-drops", "0"], "--mask-drops 0"),
    (["--lenient", "2"], "--lenient 2"), (["--strict", "nan"], "--strict nan")])
def test_a_bad_option_is_a_cli_error_naming_it(argv: list[str], named: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        evaluate.parse_args(argv)
    assert exit_info.value.code == 2 and f"{named} is not allowed" in capsys.readouterr().err


def test_a_missing_checkpoint_is_a_cli_error_not_a_traceback(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        evaluate.main(["--depths", "110", "--sigma-grid", "0", "0.1", "--exit-depth", "0", "--no-standard-runs",
                       "--no-progress", "--out", str(tmp_path / "ev")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "digits-resnet110-blockdrop" in err and "Traceback" not in err


def test_a_broken_run_folder_is_skipped_with_the_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "half-trained").mkdir()
    args = ["--sigma-grid", "0", "--chips", "1", "--images", "20", "--depths", "8", "--mask-drops", "--exit-depth",
            "110", "--no-standard-runs", "--policies", "half-trained", "--no-progress", "--out", "ev"]
    assert evaluate.main(args) == 0
    assert "skipped half-trained: half-trained cannot be loaded" in capsys.readouterr().out


def test_every_standard_train_command_is_valid_for_train_agent() -> None:
    import train_agent

    a = evaluate.parse_args([])
    parser = train_agent.build_parser()
    for name in evaluate.LEARNED:
        cmd = evaluate.train_command(name, a, (0.0, 0.19), steps=4096)
        args = parser.parse_args(cmd[2:])
        env_id = args.env or train_agent.DEFAULT_ENV[args.algo]
        train_agent.check_algo_args(parser, args, env_id)
        kwargs = train_agent.env_kwargs_from(args, env_id)
        assert kwargs["dataset"] == "digits" and kwargs["noise_source"] == "programming"
        assert kwargs["observe_sigma"] is not name.endswith(("-nosigma", "-chip"))
        assert ("sigmas" in kwargs) is ("ideal" in name) and ("sigma_range" in kwargs) is ("ideal" not in name)
        if args.algo == "reinforce":
            train_agent.reinforce_settings(args)


def test_cim_takes_a_preset_or_a_json_chip_whose_runs_train_agent_makes(capsys: pytest.CaptureFixture) -> None:
    import train_agent

    chip = {"preset": "ideal", "adc_bits": 5}
    a = evaluate.parse_args(["--dataset", "fashion-mnist", "--cim", json.dumps(chip)])
    assert a.cim == chip
    cmd = evaluate.train_command("blockdrop-sigma", a, (0.0, 0.1))
    assert cmd[-1] == "runs/fashion-mnist-programming-ideal-adc_bits5/blockdrop-sigma"
    assert train_agent.build_parser().parse_args(cmd[2:]).cim == chip  # the very chip, back through JSON
    assert evaluate.runs_root("digits", "read", "neurosim") == Path("runs/digits-read-neurosim")
    for bad, needle in [("foo", "unknown CIM preset 'foo'"), ('{"adc_bits": 5', "is not valid JSON"),
                        ('{"preset": "ideal", "adc_bits": 99}', "adc_bits=99 is not allowed"),
                        ('{"preset": "ideal", "no_such_field": 1}', "no_such_field")]:
        with pytest.raises(SystemExit):
            evaluate.parse_args(["--cim", bad])
        err = capsys.readouterr().err
        assert "--cim" in err and needle in err, err


def test_a_policy_is_its_weights_and_record_whatever_lies_beside_them(tmp_path: Path) -> None:
    from cim_gym.evaluation import folder_hash

    run, copy = tmp_path / "run", tmp_path / "copy"
    for folder in (run, copy):
        folder.mkdir()
        for name in evaluate.POLICY_FILES:
            (folder / name).write_text(f"the {name}")
    (run / "checkpoint.pt").write_text("optimizer state")
    (run / "tb").mkdir()
    (run / "tb" / "events").write_text("logs")
    assert folder_hash(run, evaluate.POLICY_FILES) == folder_hash(copy, evaluate.POLICY_FILES)
    assert folder_hash(run) != folder_hash(copy)  # the whole folder differs
    (copy / "policy.safetensors").write_text("other weights")
    assert folder_hash(run, evaluate.POLICY_FILES) != folder_hash(copy, evaluate.POLICY_FILES)
    with pytest.raises(FileNotFoundError):
        folder_hash(tmp_path / "tb-only", evaluate.POLICY_FILES)


def test_run_seeds_name_their_folders_and_pair_each_policy_with_its_twin(capsys: pytest.CaptureFixture) -> None:
    a = evaluate.parse_args(["--dataset", "fashion-mnist", "--run-seeds", "0", "1",
                             "--runs", "blockdrop-bernoulli-sigma", "blockdrop-bernoulli-nosigma",
                             "blockdrop-bernoulli-chip-sigma"])
    runs = evaluate.standard_runs(a)
    assert [r[0] for r in runs] == ["blockdrop-bernoulli-sigma", "blockdrop-bernoulli-sigma-seed1",
                                    "blockdrop-bernoulli-nosigma", "blockdrop-bernoulli-nosigma-seed1",
                                    "blockdrop-bernoulli-chip-sigma"]  # chip-aware: the first seed only
    cmd = evaluate.train_command("blockdrop-bernoulli-sigma", a, (0.0, 0.1), seed=1)
    assert cmd[cmd.index("--seed") + 1] == "1" and cmd[-1] == "runs/fashion-mnist/blockdrop-bernoulli-sigma-seed1"
    pairs = evaluate.comparisons([r[0] for r in runs] + ["fixed-resnet8"])
    assert pairs == [("blockdrop-bernoulli-sigma", "blockdrop-bernoulli-nosigma", "sigma"),
                     ("blockdrop-bernoulli-sigma-seed1", "blockdrop-bernoulli-nosigma-seed1", "sigma"),
                     ("blockdrop-bernoulli-chip-sigma", "blockdrop-bernoulli-sigma", "the chip on top of sigma")]
    assert evaluate.comparisons(["my-beta-sigma", "my-beta-nosigma", "other-sigma"]) == [
        ("my-beta-sigma", "my-beta-nosigma", "sigma")]
    for bad in (["--runs", "blockdrop"], ["--run-seeds", "0", "0"], ["--run-seeds", "-1"]):
        with pytest.raises(SystemExit):
            evaluate.parse_args(bad)
        assert bad[0] in capsys.readouterr().err


def test_exit_depth_0_leaves_every_multi_exit_method_out() -> None:
    names = [r[1] for r in evaluate.standard_runs(evaluate.parse_args(["--exit-depth", "0"]))]
    assert names and all(not n.startswith(("exit-", "thresholds-")) for n in names)
    assert "exit-sigma" in [r[1] for r in evaluate.standard_runs(evaluate.parse_args([]))]


def test_train_missing_refuses_a_standard_run_trained_on_another_sigma_range(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    import train_agent

    monkeypatch.chdir(tmp_path)
    name = "blockdrop-bernoulli-sigma"
    args = ["--sigma-grid", "0", "0.1", "--chips", "1", "--images", "10", "--depths", "8", "--exit-depth", "0",
            "--runs", name, "--train-missing", "--no-progress", "--out", "ev"]
    # the run exists and is complete, but over sigma 0 to 0.05: the grid reaches 0.1
    cmd = evaluate.train_command(name, evaluate.parse_args(args), [0.0, 0.05], steps=4096)
    assert train_agent.main([*cmd[2:], "--no-report", "--no-progress"]) == 0
    with pytest.raises(SystemExit) as exc:
        evaluate.main(args)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and f"runs/digits/{name}" in err and "sigma 0 to 0.05" in err and "move it away" in err
    assert not Path("ev").exists()
