"""Checkpoint format and registry: round trip, hash verification, clear errors, atomic writes, shipped weights."""

import json
from pathlib import Path

import pytest
import torch

from cim_gym.backbones import (
    BackboneNotFoundError,
    CorruptCheckpointError,
    backbone_name,
    list_backbones,
    load_backbone,
    parse_name,
    save_checkpoint,
)
from cim_gym.backbones.checkpoint import SHIPPED_DIR, architecture_of, atomic_write, file_sha256
from cim_gym.hardware import CIMConfig, quantize_model
from cim_gym.models import MultiExitResNet, ResNet


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CIM_GYM_HOME", str(tmp_path))
    return tmp_path / "backbones"


def tiny_checkpoint(
    folder: Path, cls=ResNet, dataset: str = "toyset", variant: str = "blockdrop"
) -> tuple[torch.nn.Module, Path]:
    torch.manual_seed(0)
    cfg = CIMConfig(weight_bits=8, input_bits=8)
    plain = cls(8, 10, in_channels=1)
    x = torch.randn(16, 1, 8, 8)
    qmodel = quantize_model(plain, cfg, example_input=x).eval()
    name = backbone_name(dataset, 8, variant)
    meta = {"variant": variant, "architecture": architecture_of(plain), "dataset": {"name": dataset, "input_shape": [1, 8, 8]},
            "quantization": cfg.to_dict(), "training": {"command": "test"}, "accuracy": {"test": 0.0}}
    return qmodel, save_checkpoint(qmodel, meta, folder, name)


@pytest.mark.parametrize("cls,variant", [(ResNet, "blockdrop"), (MultiExitResNet, "multiexit")])
def test_round_trip_gives_the_same_outputs(home: Path, cls, variant: str) -> None:
    qmodel, sidecar = tiny_checkpoint(home, cls, variant=variant)
    assert sidecar == home / f"toyset-resnet8-{variant}.json"
    bb = load_backbone("toyset", depth=8, variant=variant)
    assert bb.name == f"toyset-resnet8-{variant}" and bb.path == sidecar
    assert type(bb.model).__name__ == cls.__name__ and not bb.model.training
    assert bb.quant_config == CIMConfig(weight_bits=8, input_bits=8)
    assert bb.meta["sha256"] == file_sha256(home / f"toyset-resnet8-{variant}.safetensors")
    assert bb.meta["package_version"] and bb.meta["format_version"] == 1
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(bb.model(x), qmodel(x), rtol=0, atol=0)
    # by full name too
    assert load_backbone(f"toyset-resnet8-{variant}").name == bb.name
    assert f"toyset-resnet8-{variant}" in list_backbones()


def test_corrupt_weights_are_a_clear_error(home: Path) -> None:
    _, sidecar = tiny_checkpoint(home)
    weights = sidecar.with_suffix(".safetensors")
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CorruptCheckpointError) as err:
        load_backbone("toyset", depth=8)
    msg = str(err.value)
    assert str(weights) in msg and "SHA-256" in msg
    assert "python -m cim_gym.backbones.train --dataset toyset --depth 8 --variant blockdrop" in msg


def test_unreadable_sidecar_is_a_clear_error(home: Path) -> None:
    _, sidecar = tiny_checkpoint(home)
    sidecar.write_text("{not json")
    with pytest.raises(CorruptCheckpointError, match="unreadable"):
        load_backbone("toyset", depth=8)


def test_sidecar_with_wrong_architecture_is_a_clear_error(home: Path) -> None:
    _, sidecar = tiny_checkpoint(home)
    meta = json.loads(sidecar.read_text())
    meta["architecture"]["depth"] = 14
    sidecar.write_text(json.dumps(meta))
    with pytest.raises(CorruptCheckpointError, match="does not fit"):
        load_backbone("toyset", depth=8)


def test_missing_checkpoint_names_the_train_command(home: Path) -> None:
    with pytest.raises(BackboneNotFoundError) as err:
        load_backbone("digits", depth=110, variant="multiexit")
    msg = str(err.value)
    assert "python -m cim_gym.backbones.train --dataset digits --depth 110 --variant multiexit" in msg
    assert str(home) in msg
    assert isinstance(err.value, FileNotFoundError)


def test_missing_weights_file_is_an_error_not_random_weights(home: Path) -> None:
    _, sidecar = tiny_checkpoint(home)
    sidecar.with_suffix(".safetensors").unlink()
    with pytest.raises(BackboneNotFoundError, match="weights .* are missing"):
        load_backbone("toyset", depth=8)


def test_bad_names_and_variants() -> None:
    with pytest.raises(ValueError, match="variant"):
        backbone_name("digits", 20, "plain")
    with pytest.raises(ValueError, match="not a backbone name"):
        load_backbone("digits-20")
    assert parse_name("fashion-mnist-resnet56-multiexit") == ("fashion-mnist", 56, "multiexit")


def test_atomic_write_leaves_old_file_on_failure(tmp_path: Path) -> None:
    path = tmp_path / "f.json"
    path.write_text("old")

    def failing(tmp: Path) -> None:
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, failing)
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.json"]  # no temporary file left
    atomic_write(path, lambda tmp: tmp.write_text("new"))
    assert path.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.json"]


def test_shipped_folder_is_searched_before_the_cache(home: Path) -> None:
    shipped = [p.stem for p in sorted(SHIPPED_DIR.glob("*.json"))]
    assert shipped
    names = list_backbones()
    assert names[: len(shipped)] == shipped


def test_a_folder_overrides_the_search_order(home: Path, tmp_path: Path) -> None:
    """A retrained model with a shipped model's name loads from its own folder; elsewhere the shipped one wins."""
    folder = tmp_path / "retrained"
    qmodel, sidecar = tiny_checkpoint(folder, dataset="digits")
    bb = load_backbone("digits", depth=8, folder=folder)
    assert bb.path == sidecar
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(bb.model(x), qmodel(x), rtol=0, atol=0)
    assert load_backbone("digits", depth=8).path == SHIPPED_DIR / "digits-resnet8-blockdrop.json"
    with pytest.raises(BackboneNotFoundError, match="retrained.*digits-resnet8-blockdrop"):
        load_backbone("digits", depth=20, folder=folder)
