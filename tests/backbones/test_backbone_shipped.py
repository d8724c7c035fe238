"""Every shipped checkpoint loads by name and reproduces its recorded clean test accuracy within 0.2 points."""

import json

import pytest

from cim_gym.backbones import list_backbones, load_backbone
from cim_gym.backbones.checkpoint import SHIPPED_DIR
from cim_gym.backbones.shipped import SHIPPED
from cim_gym.backbones.train import evaluate
from cim_gym.data import DatasetNotFoundError, load_dataset

SHIPPED_NAMES = sorted(p.stem for p in SHIPPED_DIR.glob("*.json"))
DIGITS = [n for n in SHIPPED_NAMES if n.startswith("digits-")]


def test_the_digits_set_is_shipped() -> None:
    expected = {f"digits-resnet{d}-blockdrop" for d in (8, 14, 20, 32, 56)} | {"digits-resnet32-multiexit"}
    assert expected <= set(SHIPPED_NAMES)
    assert set(SHIPPED_NAMES) <= set(SHIPPED)  # every shipped file has its recorded command
    assert set(SHIPPED_NAMES) <= set(list_backbones())


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
