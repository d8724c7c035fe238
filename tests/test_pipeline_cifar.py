"""The whole pipeline on CIFAR-10 through its real command lines, on a tiny synthetic CIFAR-10 in torchvision's
on-disk layout: backbones (``python -m cim_gym.backbones.train --out``), a policy (``train_agent.py --data-root
--backbones``), the evaluation (``evaluate.py --data-root --backbones``). Nothing is downloaded, nothing is read from
the user's caches."""

from __future__ import annotations

import csv
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from agents import load_policy

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import evaluate  # noqa: E402

IMAGES_PER_BATCH = 60
"""Five training batches of 60: 270 training images after the 10 % validation split, more than the 256
calibration images an environment takes by default."""

# torchvision checks the md5 sums of the official CIFAR files, which the synthetic ones cannot match: in the
# subprocesses, this sitecustomize accepts them (as tests/data/test_data.py does in process) and makes any download
# attempt an error.
SITECUSTOMIZE = '''
import os

import cim_gym.data as data

_load = data._LOADERS["cifar10"]


def _accept_synthetic(root, download, seed):
    import torchvision

    torchvision.datasets.CIFAR10._check_integrity = lambda self: True
    torchvision.datasets.cifar.check_integrity = lambda path, md5=None: os.path.isfile(path)
    return _load(root, download, seed)


def _no_download(name, root, make):
    raise AssertionError(f"the pipeline tried to download {name} into {root}")


data._LOADERS["cifar10"] = _accept_synthetic
data._torchvision_download = _no_download
'''


def write_cifar10(root: Path, per_batch: int = IMAGES_PER_BATCH, seed: int = 0) -> Path:
    """A tiny CIFAR-10 as torchvision stores it: ``root/cifar-10-batches-py/`` with ``data_batch_1`` .. ``_5``,
    ``test_batch`` (pickled dicts of (N, 3072) uint8 rows and labels 0-9) and ``batches.meta``."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = np.arange(per_batch) % 10
        rng.shuffle(labels)
        # a class-dependent mean colour, so that the backbones learn something in one epoch
        images = rng.normal(40 + 18 * labels[:, None], 30, (per_batch, 3072)).clip(0, 255).astype(np.uint8)
        with open(folder / name, "wb") as f:
            pickle.dump({"batch_label": name, "data": images, "labels": [int(y) for y in labels],
                         "filenames": [f"{name}_{i}.png" for i in range(per_batch)]}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                                     "truck"], "num_cases_per_batch": per_batch, "num_vis": 3072}, f)
    return root


def subprocess_env(tmp: Path) -> dict[str, str]:
    """The environment of the command lines: the sitecustomize above, and no cache or default data folder to fall
    back on."""
    hooks = tmp / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(SITECUSTOMIZE)
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(hooks), str(ROOT)]), "CIM_GYM_HOME": str(tmp / "home"),
            "CIM_GYM_DATA": str(tmp / "no-data-here"), "OMP_NUM_THREADS": "1"}


def test_cifar10_pipeline_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    env = subprocess_env(tmp_path)
    data, backbones = str(write_cifar10(tmp_path / "data").resolve()), str((tmp_path / "backbones").resolve())

    def run(*argv: str) -> str:
        done = subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                              env=env)
        assert done.returncode == 0, f"{argv}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
        return done.stdout

    for variant in ("blockdrop", "multiexit"):
        run("-m", "cim_gym.backbones.train", "--dataset", "cifar10", "--data-root", data, "--depth", "8", "--variant",
            variant, "--epochs", "1", "--batch-size", "64", "--mask-eval-draws", "1", "--threads", "1", "--no-progress",
            "--run-dir", str(tmp_path / f"run-{variant}"), "--out", backbones)
    assert sorted(f.name for f in Path(backbones).glob("*.json")) == ["cifar10-resnet8-blockdrop.json",
                                                                      "cifar10-resnet8-multiexit.json"]

    policy_dir = tmp_path / "policy"
    run(str(ROOT / "train_agent.py"), "--algo", "reinforce", "--dataset", "cifar10", "--data-root", data,
        "--backbones", backbones, "--depth", "8", "--sigmas", "0", "0.05", "--chips-per-sigma", "1", "--steps", "256",
        "--batch-size", "64", "--finetune-batch-size", "32", "--report-chips", "1", "--report-images", "20",
        "--no-progress", "--out", str(policy_dir))
    assert (policy_dir / "evaluation.csv").is_file()  # its own report ran on the same data and backbone
    policy = load_policy(policy_dir)
    assert policy.env_config["data_root"] == data and policy.env_config["backbone_kwargs"] == {"folder": backbones}

    out = tmp_path / "ev"
    stdout = run(str(ROOT / "evaluate.py"), "--dataset", "cifar10", "--data-root", data, "--backbones", backbones,
                 "--sigma-grid", "0", "0.05", "--chips", "1", "--images", "20", "--blockdrop-depth", "8",
                 "--exit-depth", "8", "--policies", str(policy_dir), "--no-progress", "--out", str(out))
    config = json.loads((out / "config.json").read_text())
    methods = ["fixed-resnet8", "branchynet-lenient-resnet8", "branchynet-strict-resnet8", "policy"]
    assert [m["name"] for m in config["sweep"]["methods"]] == methods  # ResNet-8 has no static mask to drop
    assert config["sweep"]["spec"]["backbones"] == backbones and config["sweep"]["spec"]["data_root"] == data
    assert {Path(b["sidecar"]).parent for b in config["backbones"].values()} == {Path(backbones)}
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    for method in methods:
        mine = [r for r in rows if r["method"] == method]
        assert sorted(float(r["sigma"]) for r in mine) == [0.0, 0.05], method
        assert all(r["n_images"] == "20" and 0 <= float(r["accuracy"]) <= 100 for r in mine), method
    assert {r["backbone"] for r in rows if r["method"] == "policy"} == {"cifar10-resnet8-blockdrop"}
    summary = (out / "summary.md").read_text()
    assert "# Evaluation: cifar10" in summary and all(f"| {m} |" in summary for m in methods)
    # the missing standard runs are named with commands that train them on the same data and backbones
    skipped = [line for line in stdout.splitlines() if line.startswith("skipped ") and "train_agent.py" in line]
    assert skipped and all(f"--data-root {data} --backbones {backbones}" in line for line in skipped)
    assert evaluate.main(["--dataset", "cifar10", "--data-root", data, "--backbones", backbones, "--sigma-grid", "0",
                          "0.05", "--list-runs"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert listed and all(f"--data-root {data} --backbones {backbones}" in line for line in listed)


def test_a_policy_is_only_evaluated_on_the_backbone_folder_it_was_trained_on(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from cim_gym.evaluation.sweep import SweepSpec, policy_config_problems

    for name in ("mine", "other"):
        (tmp_path / name).mkdir()
    monkeypatch.chdir(tmp_path)
    spec = SweepSpec(dataset="cifar10", backbones="mine")
    trained = {"dataset": "cifar10", "depth": 8, "backbone_kwargs": {"folder": str(tmp_path / "mine")}}
    assert policy_config_problems(spec, 8, trained) == []  # the same folder, however it is written
    for theirs, needle in [({"folder": str(tmp_path / "other")}, "other"), ({}, "registered"),
                           ({"folder": "mine", "recipe": "seed1"}, "recipe 'seed1'")]:
        problems = policy_config_problems(spec, 8, {**trained, "backbone_kwargs": theirs})
        assert len(problems) == 1 and needle in problems[0], problems
    assert policy_config_problems(SweepSpec(dataset="cifar10"), 8, trained)  # trained on a folder, sweep on shipped
    with pytest.raises(ValueError, match="backbones='absent' is not allowed: expected None or an existing folder"):
        SweepSpec(dataset="cifar10", backbones="absent")


@pytest.mark.parametrize("option", ["--data-root", "--backbones"])
def test_a_folder_that_does_not_exist_is_refused_naming_the_option(option: str, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    import train_agent

    absent = str(tmp_path / "absent")
    with pytest.raises(SystemExit):
        evaluate.parse_args(["--dataset", "cifar10", option, absent])
    assert f"{option}: '{absent}' is not allowed: expected an existing folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train_agent.build_parser().parse_args(["--dataset", "cifar10", option, absent])
    assert f"{option}: '{absent}' is not allowed: expected an existing folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # a folder without a backbone of the data set
        evaluate.parse_args(["--dataset", "cifar10", "--backbones", str(tmp_path)])
    assert "holds no block-drop backbone of cifar10" in capsys.readouterr().err
