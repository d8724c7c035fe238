"""Every shipped checkpoint loads by name and reproduces its recorded clean test accuracy within 0.2 points."""

import json
import shlex
from pathlib import Path

import pytest

from cim_gym.backbones import list_backbones, load_backbone
from cim_gym.backbones.checkpoint import SHIPPED_DIR
from cim_gym.backbones.shipped import SHIPPED, canonical_command
from cim_gym.backbones.train import evaluate, parse_args
from cim_gym.backbones.train import main as train_main
from cim_gym.data import DatasetNotFoundError, load_dataset

SHIPPED_NAMES = sorted(p.stem for p in SHIPPED_DIR.glob("*.json"))
DIGITS = [n for n in SHIPPED_NAMES if n.startswith("digits-")]


def test_the_digits_set_is_shipped() -> None:
    expected = {f"digits-resnet{d}-blockdrop" for d in (8, 14, 20, 32, 56)} | {"digits-resnet32-multiexit"}
    assert expected <= set(SHIPPED_NAMES)
    assert set(SHIPPED_NAMES) <= set(SHIPPED)  # every shipped file has its recorded command
    assert set(SHIPPED_NAMES) <= set(list_backbones())


def test_the_driver_trains_what_is_shipped() -> None:
    """Every shipped file was made by its recorded driver command, and every driver command makes a checkpoint of
    the entry's name."""
    for name in SHIPPED_NAMES:
        meta = json.loads((SHIPPED_DIR / f"{name}.json").read_text())
        assert meta["training"]["command"] == canonical_command(SHIPPED[name]), name
    for name, args in SHIPPED.items():
        assert parse_args(shlex.split(args)).name == name


def test_ship_checks_a_checkpoint_then_puts_it_in_the_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import cim_gym.backbones.shipped as shipped_mod

    name = "digits-resnet8-blockdrop-seed5"
    args = "--dataset digits --depth 8 --epochs 1 --seed 5 --mask-eval-draws 1"
    monkeypatch.setitem(SHIPPED, name, args)
    monkeypatch.setattr(shipped_mod, "SHIPPED_DIR", tmp_path / "package")
    monkeypatch.setattr("cim_gym.backbones.checkpoint.SHIPPED_DIR", tmp_path / "package")
    out = tmp_path / "out"
    train_main(shlex.split(args) + ["--out", str(out), "--run-dir", str(tmp_path / "run"), "--no-progress"])
    with pytest.raises(ValueError, match="not its shipped command"):
        monkeypatch.setitem(SHIPPED, name, args + " --lr 0.05")
        shipped_mod.ship([name], out)
    monkeypatch.setitem(SHIPPED, name, args)
    shipped_mod.ship([name], out)
    bb = load_backbone(name, folder=tmp_path / "package")
    assert bb.meta["sha256"] == json.loads((out / f"{name}.json").read_text())["sha256"]
    assert bb.meta["accuracy"] == json.loads((out / f"{name}.json").read_text())["accuracy"]


def test_skip_existing_retrains_a_checkpoint_shipped_by_another_command(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import cim_gym.backbones.shipped as shipped_mod

    args = "--dataset digits --depth 8 --epochs 1"
    names = {"digits-resnet8-blockdrop-seed5": "current", "digits-resnet8-blockdrop-seed6": "older",
             "digits-resnet8-blockdrop-seed7": "missing"}
    monkeypatch.setattr(shipped_mod, "SHIPPED_DIR", tmp_path)
    for i, (name, state) in enumerate(names.items()):
        monkeypatch.setitem(SHIPPED, name, f"{args} --seed {5 + i}")
        recorded = canonical_command(SHIPPED[name]) + (" --lr 0.05" if state == "older" else "")
        if state != "missing":
            (tmp_path / f"{name}.json").write_text(json.dumps({"training": {"command": recorded}}))
    trained: list[list[str]] = []
    monkeypatch.setattr("cim_gym.backbones.train.main", trained.append)
    shipped_mod.train(list(names), threads=1, skip_existing=True)
    assert [a[a.index("--seed") + 1] for a in trained] == ["6", "7"]


@pytest.mark.parametrize("name", SHIPPED_NAMES)
def test_shipped_checkpoint_reproduces_its_accuracy(name: str) -> None:
    bb = load_backbone(name)
    meta = bb.meta
    try:
        data = load_dataset(meta["dataset"]["name"], val_fraction=meta["dataset"]["val_fraction"],
                            seed=meta["dataset"]["split_seed"], download=False)
    except DatasetNotFoundError:
        pytest.skip(f"data set {meta['dataset']['name']} is not installed")
    assert list(data.info.mean) == meta["dataset"]["mean"] and list(data.info.std) == meta["dataset"]["std"]
    acc = evaluate(bb.model, data.test.images, data.test.labels).flatten()
    assert abs(float(acc[-1]) - meta["accuracy"]["test"]) <= 0.2, (name, float(acc[-1]), meta["accuracy"]["test"])
    if bb.variant == "multiexit":
        for got, want in zip(acc.tolist(), meta["accuracy"]["test_per_exit"]):
            assert abs(got - want) <= 0.2
    assert meta["training"]["command"].startswith("python -m cim_gym.backbones.train")
    assert json.loads(json.dumps(meta)) == meta
