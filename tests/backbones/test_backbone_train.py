"""Training entry point: determinism in the seed, resume equals an uninterrupted run, augmentation, masks, CLI."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cim_gym.backbones import load_backbone
from cim_gym.backbones.train import (
    TrainSettings,
    augment_batch,
    default_exit_weights,
    default_run_dir,
    parse_args,
    random_keep_masks,
    survival_mask,
    train_backbone,
)


def settings(tmp_path: Path, run: str, **kw) -> TrainSettings:
    base = dict(dataset="digits", depth=8, epochs=1, batch_size=128, seed=3, progress=False, mask_eval_draws=2,
                run_dir=str(tmp_path / run), out=str(tmp_path / f"out-{run}"))
    base.update(kw)
    return TrainSettings(**base)


def weights(sidecar: Path) -> dict[str, torch.Tensor]:
    return load_file(str(sidecar.with_name(json.loads(sidecar.read_text())["file"])))


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


def test_one_epoch_is_deterministic_in_the_seed(tmp_path: Path) -> None:
    a = train_backbone(settings(tmp_path, "a"))
    b = train_backbone(settings(tmp_path, "b"))
    c = train_backbone(settings(tmp_path, "c", seed=4))
    assert_same(weights(a), weights(b))
    assert json.loads(a.read_text())["accuracy"] == json.loads(b.read_text())["accuracy"]
    assert not torch.equal(weights(a)["stem.conv.weight"], weights(c)["stem.conv.weight"])


def test_resume_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    full = train_backbone(settings(tmp_path, "full", epochs=2))
    # interrupted after epoch 1: emulate by training 1 epoch of a 2-epoch run, then running the command again
    s = settings(tmp_path, "resumed", epochs=2)
    import cim_gym.backbones.train as train_mod

    class Stop(Exception):
        pass

    log = Path(s.run_dir) / "log.jsonl"
    orig_save = train_mod.atomic_write

    def save_then_maybe_stop(path, write):
        orig_save(path, write)
        if path.name == "last.pt" and log.is_file() and len(log.read_text().splitlines()) == 1:
            raise Stop

    train_mod.atomic_write = save_then_maybe_stop
    try:
        with pytest.raises(Stop):
            train_backbone(s)
    finally:
        train_mod.atomic_write = orig_save
    assert (Path(s.run_dir) / "last.pt").is_file()
    resumed = train_backbone(s)
    assert_same(weights(full), weights(resumed))


def test_resume_refuses_other_settings(tmp_path: Path) -> None:
    train_backbone(settings(tmp_path, "x"))
    with pytest.raises(ValueError, match="other settings"):
        train_backbone(settings(tmp_path, "x", lr=0.05))


def test_multiexit_training_writes_per_exit_accuracy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CIM_GYM_HOME", str(tmp_path / "home"))
    sidecar = train_backbone(settings(tmp_path, "me", variant="multiexit", depth=14, out=str(tmp_path / "home" / "backbones")))
    meta = json.loads(sidecar.read_text())
    assert len(meta["accuracy"]["test_per_exit"]) == 3 == meta["architecture"]["num_exits"]
    assert meta["training"]["exit_weights"] == [1.0, 0.6, 0.3]
    assert sidecar.name == "digits-resnet14-multiexit-seed3.json"  # seed 3: part of the name
    bb = load_backbone("digits", depth=14, variant="multiexit", recipe="seed3")
    assert bb.model(torch.zeros(2, 1, 8, 8)).shape == (3, 2, 10)


def test_noise_aware_training_runs_and_changes_the_result(tmp_path: Path) -> None:
    clean = train_backbone(settings(tmp_path, "clean"))
    noisy = train_backbone(settings(tmp_path, "noisy", noise_aware_sigma=0.2))
    assert not torch.equal(weights(clean)["stem.conv.weight"], weights(noisy)["stem.conv.weight"])
    assert "--noise-aware-training 0.2" in json.loads(noisy.read_text())["training"]["command"]


def test_augment_batch_crops_and_flips() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.arange(2 * 1 * 8 * 8, dtype=torch.float32).view(2, 1, 8, 8)
    fill = torch.tensor([-1.0])
    out = augment_batch(x, gen, pad=1, flip=False, fill=fill)
    assert out.shape == x.shape
    # every output is a shifted window of the padded input: interior values come from x or are the fill value
    for b in range(2):
        values = set(out[b].flatten().tolist())
        assert values <= set(x[b].flatten().tolist()) | {-1.0}
    # no padding and no flip: identity
    torch.testing.assert_close(augment_batch(x, gen, pad=0, flip=False, fill=fill), x)
    flipped = augment_batch(x.repeat(64, 1, 1, 1), gen, pad=0, flip=True, fill=fill)
    n_flipped = sum(bool(torch.equal(f, x[i % 2].flip(2))) for i, f in enumerate(flipped))
    assert 10 < n_flipped < 118


def test_masks() -> None:
    gen = torch.Generator().manual_seed(0)
    m = random_keep_masks(500, 27, 9, gen)
    assert m.dtype == torch.bool and bool((m.sum(1) == 9).all())
    assert m.float().mean(0).min() > 0.2  # every block is dropped and kept
    s = survival_mask(2000, 9, 0.8, gen)
    assert abs(s.float().mean().item() - 0.8) < 0.02
    assert default_exit_weights(3) == (1.0, 0.6, 0.3)
    assert default_exit_weights(5)[0] == 1.0 and default_exit_weights(5)[-1] == 0.3


def test_settings_validation_and_command_round_trip() -> None:
    with pytest.raises(ValueError, match="depth"):
        TrainSettings(depth=21)
    with pytest.raises(ValueError, match="variant"):
        TrainSettings(variant="plain")
    with pytest.raises(ValueError, match="survival=1.5"):
        TrainSettings(variant="multiexit", survival=1.5)
    s = TrainSettings(dataset="fashion-mnist", depth=56, variant="multiexit", epochs=7, exit_weights=(1, 1, 1),
                      noise_aware_sigma=0.1, augment=False)
    cmd = s.command()
    assert cmd.startswith("python -m cim_gym.backbones.train --dataset fashion-mnist --depth 56 --variant multiexit")
    again = parse_args(cmd.split()[3:])
    assert again.result_fields() == s.result_fields()


def test_cli_help() -> None:
    out = subprocess.run([sys.executable, "-m", "cim_gym.backbones.train", "--help"], capture_output=True, text=True,
                         check=True).stdout
    for flag in ("--dataset", "--depth", "--variant", "--noise-aware-training", "--exit-weights", "--survival", "--seed"):
        assert flag in out


def _schema(value: object) -> object:
    """The key structure of a sidecar: dict keys, recursively (leaves collapse to None)."""
    return {k: _schema(v) for k, v in value.items()} if isinstance(value, dict) else None


def test_float_pretraining_then_qat_finetune_writes_the_same_kind_of_checkpoint(tmp_path: Path) -> None:
    qat = train_backbone(settings(tmp_path, "qat", epochs=2))
    mixed = train_backbone(settings(tmp_path, "mixed", epochs=2, float_epochs=1))
    a, b = json.loads(qat.read_text()), json.loads(mixed.read_text())
    assert _schema(a) == _schema(b)
    assert b["training"]["settings"]["float_epochs"] == 1 and "--float-epochs 1" in b["training"]["command"]
    assert b["training"]["float_epoch_seconds"] > 0 and b["training"]["qat_epoch_seconds"] > 0
    assert a["training"]["float_epoch_seconds"] is None
    assert b["training"]["wall_seconds"] >= b["training"]["train_seconds"] > 0
    assert b["training"]["train_cpu_seconds"] > 0
    phases = [json.loads(line)["phase"] for line in (tmp_path / "mixed" / "log.jsonl").read_text().splitlines()]
    assert phases == ["float", "qat"]
    assert weights(qat).keys() == weights(mixed).keys()  # quantizer ranges included: the kept model is a QAT one
    assert not torch.equal(weights(qat)["stem.conv.weight"], weights(mixed)["stem.conv.weight"])
    for sidecar in (qat, mixed):
        bb = load_backbone(sidecar.stem, folder=sidecar.parent)
        assert bb.model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


def test_resume_at_the_float_to_qat_boundary_equals_an_uninterrupted_run(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import cim_gym.backbones.train as train_mod

    full = train_backbone(settings(tmp_path, "full", epochs=2, float_epochs=1))
    s = settings(tmp_path, "resumed", epochs=2, float_epochs=1)

    class Stop(Exception):
        pass

    orig_save = train_mod.atomic_write

    def save_then_stop(path: Path, write) -> None:
        orig_save(path, write)
        if path.name == "last.pt":
            raise Stop

    monkeypatch.setattr(train_mod, "atomic_write", save_then_stop)
    with pytest.raises(Stop):
        train_backbone(s)
    monkeypatch.setattr(train_mod, "atomic_write", orig_save)
    assert torch.load(Path(s.run_dir) / "last.pt", weights_only=True)["qat"] is False
    assert_same(weights(full), weights(train_backbone(s)))


@pytest.mark.parametrize(("argv", "named"), [
    (["--lr", "nan"], "lr=nan"), (["--lr", "0"], "lr=0"), (["--lr", "inf"], "lr=inf"),
    (["--weight-decay", "-1"], "weight_decay=-1"), (["--warmup-epochs", "nan"], "warmup_epochs=nan"),
    (["--variant", "multiexit", "--exit-weights", "nan", "1", "1"], "exit_weights=nan"),
    (["--variant", "multiexit", "--exit-weights", "1", "1"], "exit_weights=.*3 exits"),
    (["--exit-weights", "1", "1", "1"], "variant='multiexit'"),
    (["--variant", "multiexit", "--exit-after", "99"], "exit_after"), (["--survival", "nan"], "survival=nan"),
    (["--epochs", "0"], "epochs=0"), (["--epochs", "2", "--float-epochs", "2"], "float_epochs=2"),
    (["--float-epochs", "-1"], "float_epochs=-1"), (["--batch-size", "0"], "batch_size=0"),
    (["--noise-aware-training", "nan"], "noise_aware_sigma=nan"), (["--val-fraction", "1"], "val_fraction=1"),
    (["--weight-bits", "0"], "weight_bits"), (["--mask-eval-draws", "0"], "mask_eval_draws=0"),
    (["--device", "tpu"], "device='tpu'"), (["--threads", "-1"], "threads=-1"), (["--seed", "-1"], "seed=-1"),
    (["--depth", "9"], "depth=9"), (["--dataset", "foo"], "dataset='foo'"),
])
def test_bad_options_fail_before_training_and_leave_no_run_folder(tmp_path: Path, argv: list[str], named: str,
                                                                  capsys: pytest.CaptureFixture) -> None:
    import re

    from cim_gym.backbones.train import main

    run = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:  # a CLI error naming the value, not a traceback
        main(["--dataset", "digits", "--depth", "8", "--run-dir", str(run), "--out", str(tmp_path / "out"), *argv])
    assert exit_info.value.code == 2 and re.search(named, capsys.readouterr().err)
    assert not run.exists()


def test_an_output_folder_that_cannot_be_written_fails_before_training(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    s = settings(tmp_path, "run", out=str(blocker / "out"))
    with pytest.raises(ValueError, match="out=.*cannot be written"):
        train_backbone(s)
    assert not Path(s.run_dir).exists()


def test_the_recipe_is_part_of_the_name() -> None:
    assert TrainSettings(dataset="fashion-mnist", depth=20).name == "fashion-mnist-resnet20-blockdrop"
    assert TrainSettings(depth=20, survival=1.0).name == "digits-resnet20-blockdrop-no-stochastic-depth"
    assert TrainSettings(depth=20, survival=0.8).name == "digits-resnet20-blockdrop"  # the default, spelled out
    assert TrainSettings(depth=32, variant="multiexit", survival=0.8).name == "digits-resnet32-multiexit-stochastic-depth"
    assert TrainSettings(depth=56, survival=1.0, seed=1).name == "digits-resnet56-blockdrop-no-stochastic-depth-seed1"
    assert TrainSettings(depth=8, survival=0.5).recipe == "survival0.5"


def test_multiexit_with_stochastic_depth_drops_blocks_in_training(tmp_path: Path) -> None:
    from cim_gym.backbones.train import multiexit_logits
    from cim_gym.models import MultiExitResNet

    torch.manual_seed(0)
    model = MultiExitResNet(14, 10, 1).eval()
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        keep_all = multiexit_logits(model, x, torch.ones(3, model.num_blocks, dtype=torch.bool))
        torch.testing.assert_close(keep_all, model(x))
        dropped = multiexit_logits(model, x, torch.zeros(3, model.num_blocks, dtype=torch.bool))
    assert not torch.allclose(dropped, keep_all)
    sidecar = train_backbone(settings(tmp_path, "mesd", variant="multiexit", depth=14, survival=0.8, seed=0))
    assert sidecar.name == "digits-resnet14-multiexit-stochastic-depth.json"
    meta = json.loads(sidecar.read_text())
    assert meta["training"]["survival"] == 0.8 and "--survival 0.8" in meta["training"]["command"]


def test_an_environment_selects_a_recipe_through_backbone_kwargs(tmp_path: Path) -> None:
    import gymnasium as gym

    import cim_gym  # noqa: F401  (registers the ids)
    from cim_gym.backbones import BackboneNotFoundError

    out = tmp_path / "out"
    sidecar = train_backbone(settings(tmp_path, "nosd", survival=1.0, seed=0, out=str(out)))
    assert sidecar.name == "digits-resnet8-blockdrop-no-stochastic-depth.json"
    kwargs = dict(dataset="digits", depth=8, sigmas=[0.0, 0.05], chips_per_sigma=1, probe_images=8, calibration_images=16)
    env = gym.make("CIMBlockDrop-v0", backbone_kwargs={"folder": str(out), "recipe": "no-stochastic-depth"}, **kwargs)
    assert env.unwrapped.core.backbone.name == "digits-resnet8-blockdrop-no-stochastic-depth"
    env.reset(seed=0)
    env.close()
    with pytest.raises(BackboneNotFoundError, match=r"recipe 'seed1'.*\['no-stochastic-depth'\]"):
        gym.make("CIMBlockDrop-v0", backbone_kwargs={"folder": str(out), "recipe": "seed1"}, **kwargs)
    with pytest.raises(ValueError, match="recipe='shallow' is not allowed"):
        gym.make("CIMBlockDrop-v0", backbone_kwargs={"folder": str(out), "recipe": "shallow"}, **kwargs)


@pytest.mark.parametrize(("seed", "folder"), [(0, "digits-resnet20-blockdrop-seed0"),
                                              (1, "digits-resnet20-blockdrop-seed1")])
def test_default_run_dir_names_the_seed_once(seed: int, folder: str) -> None:
    # a second seed is in the checkpoint's name already ("...-seed1"): the folder does not repeat it
    s = TrainSettings(dataset="digits", depth=20, seed=seed)
    assert default_run_dir(s) == Path("runs") / "backbones" / folder
