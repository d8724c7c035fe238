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
from cim_gym.backbones.checkpoint import SHIPPED_DIR, architecture_of, atomic_write, file_sha256, tensor_files
from cim_gym.hardware import CIMConfig, quantize_model
from cim_gym.models import MultiExitResNet, ResNet


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CIM_GYM_HOME", str(tmp_path))
    return tmp_path / "backbones"


def weights_of(sidecar: Path) -> Path:
    """The tensor file a sidecar names."""
    return sidecar.with_name(json.loads(sidecar.read_text())["file"])


def tiny_checkpoint(
    folder: Path, cls=ResNet, dataset: str = "toyset", variant: str = "blockdrop", recipe: str = "standard", seed: int = 0
) -> tuple[torch.nn.Module, Path]:
    torch.manual_seed(seed)
    cfg = CIMConfig(weight_bits=8, input_bits=8)
    plain = cls(8, 10, in_channels=1)
    x = torch.randn(16, 1, 8, 8)
    qmodel = quantize_model(plain, cfg, example_input=x).eval()
    name = backbone_name(dataset, 8, variant, recipe)
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
    assert bb.meta["sha256"] == file_sha256(weights_of(sidecar))
    assert weights_of(sidecar).name == f"toyset-resnet8-{variant}.{bb.meta['sha256'][:16]}.safetensors"
    assert bb.meta["package_version"] and bb.meta["format_version"] == 1
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(bb.model(x), qmodel(x), rtol=0, atol=0)
    # by full name too
    assert load_backbone(f"toyset-resnet8-{variant}").name == bb.name
    assert f"toyset-resnet8-{variant}" in list_backbones()


def test_corrupt_weights_are_a_clear_error(home: Path) -> None:
    _, sidecar = tiny_checkpoint(home)
    weights = weights_of(sidecar)
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
    weights_of(sidecar).unlink()
    with pytest.raises(BackboneNotFoundError, match="weights .* are missing"):
        load_backbone("toyset", depth=8)


def test_bad_names_and_variants() -> None:
    with pytest.raises(ValueError, match="variant"):
        backbone_name("digits", 20, "plain")
    with pytest.raises(ValueError, match="not a backbone name"):
        load_backbone("digits-20")
    assert parse_name("fashion-mnist-resnet56-multiexit") == ("fashion-mnist", 56, "multiexit")
    import numpy as np

    assert backbone_name("digits", np.int64(20)) == "digits-resnet20-blockdrop"  # numpy integers are integers
    with pytest.raises(ValueError, match="depth=20.0"):
        backbone_name("digits", 20.0)


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


# ---- hard edges ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused(home: Path, value: float) -> None:
    from safetensors.torch import load_file, save_file

    _, sidecar = tiny_checkpoint(home)
    weights = weights_of(sidecar)
    tensors = load_file(str(weights))
    tensors["stem.conv.weight"][0, 0, 0, 0] = value
    save_file(tensors, str(weights))
    meta = json.loads(sidecar.read_text())
    meta["sha256"] = file_sha256(weights)  # a consistent, but broken, checkpoint
    sidecar.write_text(json.dumps(meta))
    with pytest.raises(CorruptCheckpointError, match=r"non-finite.*stem\.conv\.weight"):
        load_backbone("toyset", depth=8)
    model = ResNet(8, 10, 1)
    with torch.no_grad():
        model.head.fc.weight[0, 0] = value
    with pytest.raises(CorruptCheckpointError, match="non-finite"):
        save_checkpoint(model, {"architecture": architecture_of(model)}, home, "toyset-resnet8-blockdrop")
    assert load_backbone.__name__ and json.loads(sidecar.read_text())["sha256"] == meta["sha256"]  # nothing written


@pytest.mark.parametrize("dataset", ["..", "../toyset", "/tmp/toyset", "a/b", "toy.set", "", "-x"])
def test_data_set_names_are_names_not_paths(home: Path, dataset: str) -> None:
    tiny_checkpoint(home)
    with pytest.raises(ValueError, match="dataset=.*not allowed|not a backbone name"):
        load_backbone(dataset, depth=8)
    with pytest.raises(ValueError, match="not a backbone name"):
        load_backbone(f"{dataset}-resnet8-blockdrop")


def test_a_full_name_outside_the_folders_is_refused(home: Path, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere"
    tiny_checkpoint(outside)
    rel = Path("..") / "elsewhere" / "toyset"
    with pytest.raises(ValueError, match="not a backbone name"):
        load_backbone(f"{rel}-resnet8-blockdrop")
    with pytest.raises(ValueError, match="not a backbone name"):
        load_backbone(str(outside / "toyset-resnet8-blockdrop"))


def test_interrupted_save_leaves_the_old_or_the_new_pair_loadable(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import cim_gym.backbones.checkpoint as ckpt

    old_model, sidecar = tiny_checkpoint(home, seed=0)
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        old_out = old_model(x)
    calls: list[Path] = []
    orig = ckpt.atomic_write

    class Crash(Exception):
        pass

    def crash_before_the_sidecar(path: Path, write) -> None:
        calls.append(path)
        if path.suffix == ".json":
            raise Crash  # the tensors are written, the sidecar is not
        orig(path, write)

    monkeypatch.setattr(ckpt, "atomic_write", crash_before_the_sidecar)
    with pytest.raises(Crash):
        tiny_checkpoint(home, seed=1)
    monkeypatch.setattr(ckpt, "atomic_write", orig)
    assert [p.suffix for p in calls] == [".safetensors", ".json"]
    assert len(tensor_files(home, "toyset-resnet8-blockdrop")) == 2  # old and new tensors side by side
    with torch.no_grad():
        torch.testing.assert_close(load_backbone("toyset", depth=8).model(x), old_out, rtol=0, atol=0)
    new_model, _ = tiny_checkpoint(home, seed=1)  # a completed save: the new pair, the orphan removed
    with torch.no_grad():
        torch.testing.assert_close(load_backbone("toyset", depth=8).model(x), new_model(x), rtol=0, atol=0)
    assert tensor_files(home, "toyset-resnet8-blockdrop") == [weights_of(sidecar)]


def test_the_hash_does_not_depend_on_state_dict_order_or_process(tmp_path: Path) -> None:
    import subprocess
    import sys

    script = """
import sys, json, torch
from cim_gym.backbones.checkpoint import save_checkpoint, architecture_of
from cim_gym.models import ResNet
torch.manual_seed(0)
model = ResNet(8, 10, 1)
sd = model.state_dict()
if sys.argv[2] == "reversed":
    class R(torch.nn.Module):
        def state_dict(self):
            return dict(reversed(list(sd.items())))
    model = R()
meta = {"architecture": {"class": "ResNet", "depth": 8, "num_classes": 10, "in_channels": 1, "num_blocks": 3}}
print(json.load(open(save_checkpoint(model, meta, sys.argv[1], "toyset-resnet8-blockdrop")))["sha256"])
"""
    hashes = {subprocess.run([sys.executable, "-c", script, str(tmp_path / order), order], capture_output=True, text=True,
                             check=True).stdout.strip() for order in ("forward", "reversed", "forward")}
    assert len(hashes) == 1


def test_checkpoint_files_honour_the_umask(home: Path) -> None:
    import os

    old = os.umask(0o027)
    try:
        _, sidecar = tiny_checkpoint(home)
    finally:
        os.umask(old)
    assert sidecar.stat().st_mode & 0o777 == 0o640
    assert weights_of(sidecar).stat().st_mode & 0o777 == 0o640


def test_recipes_are_selected_by_name_and_a_wrong_one_lists_what_exists(home: Path) -> None:
    from cim_gym.backbones import recipes_of, split_name

    std, _ = tiny_checkpoint(home, seed=0)
    nosd, sidecar = tiny_checkpoint(home, recipe="no-stochastic-depth", seed=1)
    assert sidecar.name == "toyset-resnet8-blockdrop-no-stochastic-depth.json"
    x = torch.randn(2, 1, 8, 8)
    bb = load_backbone("toyset", depth=8, recipe="no-stochastic-depth")
    assert bb.recipe == "no-stochastic-depth" and load_backbone("toyset", depth=8).recipe == "standard"
    with torch.no_grad():
        torch.testing.assert_close(bb.model(x), nosd(x), rtol=0, atol=0)
    assert load_backbone("toyset-resnet8-blockdrop-no-stochastic-depth").path == sidecar
    assert recipes_of("toyset", 8, "blockdrop", [home]) == ["standard", "no-stochastic-depth"]
    with pytest.raises(BackboneNotFoundError) as err:
        load_backbone("toyset", depth=8, recipe="seed1")
    msg = str(err.value)
    assert "['standard', 'no-stochastic-depth']" in msg and "--seed 1" in msg
    with pytest.raises(ValueError, match="recipe='no-sd' is not allowed.*no-stochastic-depth"):
        load_backbone("toyset", depth=8, recipe="no-sd")
    with pytest.raises(ValueError, match="recipe='stochastic-depth' is not allowed for variant 'blockdrop'"):
        load_backbone("toyset", depth=8, recipe="stochastic-depth")
    with pytest.raises(ValueError, match="takes no variant= or recipe="):
        load_backbone("toyset-resnet8-blockdrop", recipe="seed1")
    assert split_name("fashion-mnist-resnet56-multiexit-stochastic-depth-seed1") == (
        "fashion-mnist", 56, "multiexit", "stochastic-depth-seed1")
    with pytest.raises(ValueError, match="canonical"):
        backbone_name("toyset", 8, "blockdrop", "survival0.8")
