"""The evaluation engine: shared chips, oracles as bounds, outputs that parse, paired intervals, no test leakage,
resume or refuse, and Ray == serial."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch

import cim_gym  # noqa: F401  (registers the environments)
from cim_gym.backbones.checkpoint import SHIPPED_DIR
from cim_gym.evaluation import (
    EntropyExits,
    FixedDepth,
    PolicyMethod,
    StaticMask,
    SweepMismatchError,
    SweepSpec,
    mean_interval,
    paired_interval,
    run_sweep,
    static_mask,
)
from cim_gym.evaluation.methods import choose_entropy_threshold, exit_by_entropy
from cim_gym.evaluation.report import ORACLE_FIXED_SIGMA, ORACLE_IMAGE, ORACLE_STATIC_CHIP, read_csv
from cim_gym.evaluation.sweep import Engine
from cim_gym.hardware.pool import pool_seed

SPEC = SweepSpec(dataset="digits", sigmas=(0.0, 0.1, 0.2), chips=3, images=60, seed=7)
OBSERVED: dict[str, list[dict[str, np.ndarray]]] = {"aware": [], "hidden": []}


def aware_policy(obs: dict[str, np.ndarray]) -> np.ndarray:
    """Runs every block at low sigma, drops the last block of each stage above 0.05 (ResNet-14: 6 blocks)."""
    OBSERVED["aware"].append(obs)
    keep = np.ones((len(obs["features"]), 6), dtype=np.int8)
    keep[obs["sigma"][:, 0] > 0.05] = [1, 0, 1, 0, 1, 0]
    return keep


def hidden_policy(obs: dict[str, np.ndarray]) -> np.ndarray:
    """Drops the second block of each stage for images whose first feature is above its median."""
    OBSERVED["hidden"].append(obs)
    f = obs["features"][:, 0]
    keep = np.ones((len(f), 6), dtype=np.int8)
    keep[f > np.median(f)] = [1, 0, 1, 0, 1, 0]
    return keep


def methods() -> list[Any]:
    env = {"dataset": "digits", "depth": 14, "sigmas": list(SPEC.sigmas)}
    return [
        FixedDepth(depth=8),
        FixedDepth(depth=14),
        StaticMask(depth=14, drop_per_stage=0, name="mask-keep-all"),
        StaticMask(depth=14, drop_per_stage=1),
        EntropyExits(name="branchynet-lenient", depth=32, target=0.8),
        EntropyExits(name="branchynet-strict", depth=32, target=0.3),
        PolicyMethod.from_env("aware", aware_policy, "CIMBlockDrop-v0", env, policy_macs=100),
        PolicyMethod.from_env("hidden", hidden_policy, "CIMBlockDrop-v0", {**env, "observe_sigma": False}, 50),
    ]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Any:
    out = tmp_path_factory.mktemp("sweep") / "eval"
    return run_sweep(SPEC, methods(), out, command="pytest", progress=False, comparisons=[("aware", "hidden", "sigma")])


def test_every_method_sees_the_same_chips(sweep: Any) -> None:
    rows = read_csv(sweep.out / "results.csv")
    real = [r for r in rows if r["role"] != "oracle"]
    for s in range(len(SPEC.sigmas)):
        for c in range(SPEC.chips):
            cell = [r for r in real if int(r["sigma_index"]) == s and int(r["chip"]) == c]
            assert {int(r["chip_seed"]) for r in cell} == {pool_seed(SPEC.seed, s, c)}
            for backbone in {r["backbone"] for r in cell}:
                assert len({r["chip_fingerprint"] for r in cell if r["backbone"] == backbone}) == 1
    # the same chip, the same images, the same path: identical outcomes image by image
    for cell in sweep.cells:
        m = cell["methods"]
        if "fixed-resnet14" in m:
            assert m["fixed-resnet14"]["correct"] == m["mask-keep-all"]["correct"]
    fingerprints = {(c["key"][0], c["key"][1], c["key"][2], c["key"][3]): c["fingerprint"] for c in sweep.cells}
    assert fingerprints[("blockdrop", 14, 1, 0)] != fingerprints[("blockdrop", 14, 1, 1)]  # chips do differ


def test_policies_get_their_environments_observation_keys(sweep: Any) -> None:
    aware, hidden = OBSERVED["aware"][-1], OBSERVED["hidden"][-1]
    assert set(aware) == {"features", "sigma"} and set(hidden) == {"features"}
    assert len(aware["features"]) == len(sweep.cells[0]["methods"]["fixed-resnet8"]["correct"]) == SPEC.images


@pytest.mark.parametrize("observe", [{}, {"observe_sigma": False, "observe_chip": True}])
def test_policies_get_exactly_their_environments_observation(observe: dict[str, bool]) -> None:
    engine = Engine(SPEC, [m for m in methods() if m.name == "aware"])
    ctx = engine.contexts[("blockdrop", 14)]
    ids = ctx.image_ids
    envs = gym.make_vec("CIMBlockDrop-v0", num_envs=len(ids), vectorization_mode="vector_entry_point", dataset="digits",
                        depth=14, split="test", sigmas=SPEC.sigmas, chips_per_sigma=SPEC.chips, chip_seed=SPEC.seed,
                        **observe)
    obs, info = envs.reset(seed=0, options={"sigma": 0.2, "chip": 1, "image": ids})
    mine = ctx.observe({"dataset": "digits", "depth": 14, **observe}, ids, np.full(len(ids), ctx.pool.chip_index(2, 1)))
    assert set(mine) == set(obs)
    for k in obs:
        np.testing.assert_array_equal(mine[k], obs[k])
    envs.close()


def test_oracles_bound_the_methods(sweep: Any) -> None:
    rows = read_csv(sweep.out / "results.csv")
    acc = {(r["method"], int(r["sigma_index"]), int(r["chip"])): float(r["accuracy"]) for r in rows}
    names = {r["method"] for r in rows if r["role"] != "oracle"}
    for s in range(len(SPEC.sigmas)):
        for c in range(SPEC.chips):
            for m in names:
                assert acc[(ORACLE_IMAGE, s, c)] >= acc[(m, s, c)]
                if m.startswith(("fixed-", "mask-")):
                    assert acc[(ORACLE_STATIC_CHIP, s, c)] >= acc[(m, s, c)]
        for m in ("fixed-resnet8", "fixed-resnet14"):
            oracle = np.mean([acc[(ORACLE_FIXED_SIGMA, s, c)] for c in range(SPEC.chips)])
            assert oracle >= np.mean([acc[(m, s, c)] for c in range(SPEC.chips)])


def test_outputs_are_written_and_parse(sweep: Any) -> None:
    import matplotlib.image

    rows = read_csv(sweep.out / "results.csv")
    assert len([r for r in rows if r["role"] != "oracle"]) == len(methods()) * len(SPEC.sigmas) * SPEC.chips
    decision = {r["method"]: int(r["decision_macs"]) for r in rows}
    assert decision["fixed-resnet8"] == 0 and decision["aware"] > 100 and decision["aware"] - decision["hidden"] == 50
    config = json.loads((sweep.out / "config.json").read_text())
    assert config["command"] == "pytest" and config["package_version"] == cim_gym.__version__
    assert all(len(b["sha256"]) == 64 for b in config["backbones"].values())
    assert config["chip_seeds"]["0.1"] == [pool_seed(SPEC.seed, 1, c) for c in range(SPEC.chips)]
    lenient = next(m for m in config["sweep"]["methods"] if m["name"] == "branchynet-lenient")
    strict = next(m for m in config["sweep"]["methods"] if m["name"] == "branchynet-strict")
    assert lenient["threshold_nats"] > strict["threshold_nats"]
    summary = (sweep.out / "summary.md").read_text()
    for heading in ("## Accuracy", "## Compute", "## Paired differences", "## Where the noise-aware methods do not win",
                    "## Pareto front"):
        assert heading in summary
    assert "| aware | fixed-resnet14 |" in summary
    assert "## Deeper against shallower fixed models" in summary and "| fixed-resnet14 | fixed-resnet8 |" in summary
    assert "| aware | hidden | sigma |" in summary and f"| aware | {ORACLE_STATIC_CHIP} |" in summary
    assert config["comparisons"] == [["aware", "hidden", "sigma"]]
    for name in ("accuracy_vs_sigma.png", "compute_vs_sigma.png", "pareto.png", "path_vs_sigma.png"):
        image = matplotlib.image.imread(sweep.out / name)
        assert image.shape[0] > 100 and image.shape[1] > 100


def test_rerun_resumes_and_another_sweep_is_refused(sweep: Any, tmp_path: Path) -> None:
    again = run_sweep(SPEC, methods(), sweep.out, command="pytest", progress=False, report=False)
    assert again.ran == 0 and again.cells == sweep.cells
    other = SweepSpec(**{**SPEC.to_dict(), "chips": 2})
    with pytest.raises(SweepMismatchError, match="spec.chips"):
        run_sweep(other, methods(), sweep.out, progress=False)
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(SweepMismatchError, match="not an evaluation folder"):
        run_sweep(SPEC, [FixedDepth(depth=8)], tmp_path, progress=False)


def test_paired_interval_of_a_method_with_itself_is_exactly_zero(sweep: Any) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(80, 10, size=7)
    iv = paired_interval(x, x)
    assert (iv.mean, iv.half_width, iv.n) == (0.0, 0.0, 7)
    assert "| mask-keep-all | fixed-resnet14 |" not in (sweep.out / "summary.md").read_text()  # baselines: not paired
    with pytest.raises(ValueError, match="one entry per chip"):
        paired_interval(x, x[:3])


def test_intervals_shrink_as_chips_grow() -> None:
    rng = np.random.default_rng(1)
    chips = rng.normal(70.0, 12.0, size=320)
    widths = [mean_interval(chips[:n]).half_width for n in (5, 20, 80, 320)]
    assert all(a > b for a, b in zip(widths, widths[1:]))
    assert mean_interval([3.0]).half_width == 0.0
    with pytest.raises(ValueError, match="values="):
        mean_interval([])


def test_thresholds_never_read_the_test_split(monkeypatch: pytest.MonkeyPatch) -> None:
    import cim_gym.data

    spec = SweepSpec(dataset="digits", sigmas=(0.0,), chips=1, images=0)

    def thresholds() -> tuple[list[float], list[float]]:
        ms = [EntropyExits(name="a", target=0.8), EntropyExits(name="b", rule="accuracy-drop", target=0.5)]
        engine = Engine(spec, ms)
        cell = engine.run_cell(engine.cells()[0])
        return [m.threshold for m in ms], [cell["methods"][m.name]["accuracy"] for m in ms]

    clean, clean_acc = thresholds()
    real = cim_gym.data.load_dataset

    def poisoned(*args: Any, **kwargs: Any) -> Any:
        data = real(*args, **kwargs)
        g = np.random.default_rng(0)
        data.test.labels = data.test.labels[g.permutation(len(data.test.labels))]
        data.test.images = data.test.images.flip(2)
        return data

    monkeypatch.setattr(cim_gym.data, "load_dataset", poisoned)
    dirty, dirty_acc = thresholds()
    assert dirty == clean
    assert all(d < c - 20 for d, c in zip(dirty_acc, clean_acc))  # the poison did reach the test split


def test_entropy_rule_matches_the_environment() -> None:
    engine = Engine(SweepSpec(dataset="digits", sigmas=(0.1,), chips=1, images=50), [EntropyExits(target=0.5)])
    ctx = engine.contexts[("multiexit", 32)]
    act = ctx.action("CIMExitThresholds-v0")
    chip = ctx.pool[0]
    x = ctx.core.images[:50]
    rng = np.random.default_rng(0)
    actions = rng.uniform(-1, 1, size=(50, act.num_exits - 1))
    with torch.no_grad():
        chip.generator.manual_seed(0)
        env_exits = act.forward(chip, x, actions)[1]
        chip.generator.manual_seed(0)
        mine = exit_by_entropy(chip(x), act.thresholds(actions))
        logits = chip(ctx.val.images)
    np.testing.assert_array_equal(mine, env_exits)
    t, stats = choose_entropy_threshold(logits, ctx.val.labels, act.exits[:, 0], "exit-rate", 0.5)
    assert stats["val_early_exit_rate"] >= 0.5 and 0 < t <= np.log(10)
    with pytest.raises(ValueError, match="rule="):
        choose_entropy_threshold(logits, ctx.val.labels, act.exits[:, 0], "test-set", 0.5)


def test_bad_settings_name_the_value() -> None:
    np.testing.assert_array_equal(static_mask([0, 3, 6], 9, 2), [1, 0, 0, 1, 0, 0, 1, 0, 0])
    with pytest.raises(ValueError, match="drop_per_stage=3"):
        static_mask([0, 3, 6], 9, 3)
    with pytest.raises(ValueError, match="sigmas="):
        SweepSpec(sigmas=(0.1, 0.0))
    with pytest.raises(ValueError, match="chips=0"):
        SweepSpec(chips=0)
    with pytest.raises(ValueError, match="role="):
        FixedDepth(depth=8, role="winner")
    with pytest.raises(ValueError, match="another setting"):
        Engine(SPEC, [PolicyMethod.from_env("x", aware_policy, "CIMBlockDrop-v0",
                                            {"dataset": "digits", "depth": 14, "noise_source": "read"}, 0)])


def test_a_policy_trained_on_a_backbone_retrained_since_is_refused() -> None:
    from cim_gym.evaluation.sweep import policy_config_problems

    env = gym.make("CIMBlockDrop-v0", dataset="digits", depth=14)
    trained_on = env.unwrapped.backbone_sha256
    env.close()
    assert trained_on == json.loads((SHIPPED_DIR / "digits-resnet14-blockdrop.json").read_text())["sha256"]
    config = {"dataset": "digits", "depth": 14, "sigma_range": (0.0, 0.2)}
    assert policy_config_problems(SPEC, 14, config, trained_on) == []
    assert "retrained after the policy" in policy_config_problems(SPEC, 14, config, "0" * 64)[0]
    with pytest.raises(ValueError, match="retrained after the policy"):
        Engine(SPEC, [PolicyMethod.from_env("x", aware_policy, "CIMBlockDrop-v0", config, 0, backbone_sha256="0" * 64)])


def test_ray_and_serial_runs_agree_and_per_read_noise_has_no_per_image_oracle(tmp_path: Path) -> None:
    spec = SweepSpec(dataset="digits", sigmas=(0.0, 0.15), chips=2, images=40, seed=3, noise_source="read")
    # one backbone keeps the workers' start-up short; per-read noise makes the per-method draws matter
    ms = [FixedDepth(depth=8), PolicyMethod.from_env("p", lambda obs: (obs["features"][:, :3] > 0).astype(np.int8),
                                                     "CIMBlockDrop-v0",
                                                     {"dataset": "digits", "depth": 8, "noise_source": "read"}, 10)]
    serial = run_sweep(spec, ms, tmp_path / "serial", progress=False)
    methods_seen = {r["method"] for r in read_csv(tmp_path / "serial" / "results.csv")}
    assert ORACLE_IMAGE not in methods_seen and ORACLE_FIXED_SIGMA in methods_seen
    assert f"{ORACLE_IMAGE} is not reported" in (tmp_path / "serial" / "summary.md").read_text()
    pytest.importorskip("ray", reason="Ray is the optional extra cim-gym[ray]; CI installs it")
    parallel = run_sweep(spec, ms, tmp_path / "ray", workers=2, progress=False, report=False)
    assert parallel.ran == serial.ran == len(serial.cells) == 2 * 2
    assert parallel.cells == serial.cells


def test_default_grid_is_measured_where_the_deepest_model_halves() -> None:
    from cim_gym.evaluation.grids import default_grid, grid_from_limit, measure_limit

    lines: list[str] = []
    limit = measure_limit("digits", chips=2, images=60, step=0.05, log=lines.append)
    clean = float(lines[0].rsplit("clean ", 1)[1].split(" %")[0])
    measured = {float(line.split()[1].rstrip(":")): float(line.split()[2]) for line in lines[1:]}
    assert measured[limit] <= clean / 2
    assert all(acc > clean / 2 for s, acc in measured.items() if s < limit)
    grid = grid_from_limit(limit)
    assert len(grid) >= 8 and grid[0] == 0.0 and grid[-1] == limit
    assert default_grid("digits", "programming") == grid_from_limit(0.19)  # recorded, not re-measured


def test_a_policy_is_evaluated_only_within_the_sigmas_it_was_trained_on() -> None:
    from cim_gym.evaluation.sweep import policy_config_problems

    base = {"dataset": "digits", "depth": 14}
    for trained in ({"sigma_range": (0.0, 0.2)}, {"sigmas": (0.0, 0.1, 0.2)}, {"sigmas": (0.0,)}):  # the last: ideal
        assert policy_config_problems(SPEC, 14, {**base, **trained}) == [], trained
    for trained in ({"sigma_range": (0.0, 0.12)}, {}, {"sigmas": (0.05, 0.2)}):  # {}: the default range, 0 to 0.15
        problems = policy_config_problems(SPEC, 14, {**base, **trained})
        assert len(problems) == 1 and "(sweep: 0 to 0.2)" in problems[0], (trained, problems)


def test_recorded_grids_were_measured_on_the_backbones_shipped_now(monkeypatch: pytest.MonkeyPatch) -> None:
    """A retrained deepest backbone makes its data set's recorded limits stale: this fails until they are measured
    again (python evaluate.py --measure-grid) and recorded with the new hash; meanwhile default_grid measures."""
    import cim_gym.evaluation.grids as grids

    assert {d for d, _ in grids.MEASURED_LIMITS} == set(grids.MEASURED_ON)
    for dataset, sha in grids.MEASURED_ON.items():
        assert grids.deepest_backbone_sha256(dataset) == sha, f"{dataset}: re-measure MEASURED_LIMITS"
    measured: list[str] = []
    monkeypatch.setattr(grids, "measure_limit", lambda dataset, *a, **k: measured.append(dataset) or 0.07)
    monkeypatch.setitem(grids.MEASURED_ON, "digits", "0" * 64)
    assert grids.default_grid("digits", "programming") == grids.grid_from_limit(0.07) and measured == ["digits"]


def test_a_cell_programs_its_chip_once_for_all_its_methods(monkeypatch: pytest.MonkeyPatch) -> None:
    import cim_gym.hardware.pool as pool_module

    spec = SweepSpec(dataset="digits", sigmas=(0.0, 0.1), chips=2, images=30)
    engine = Engine(spec, [FixedDepth(depth=14), StaticMask(depth=14, drop_per_stage=1),
                           PolicyMethod.from_env("p", aware_policy, "CIMBlockDrop-v0", {"dataset": "digits", "depth": 14},
                                                 0)])
    calls: list[int] = []
    real = pool_module.program
    monkeypatch.setattr(pool_module, "program", lambda *a, **k: calls.append(a[3]) or real(*a, **k))
    for key in engine.cells():
        engine.run_cell(key)
    assert calls == [pool_seed(spec.seed, s, c) for s in range(2) for c in range(2)]


def test_a_comparison_must_name_two_methods_of_the_sweep(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="comparisons="):
        run_sweep(SPEC, methods(), tmp_path / "ev", progress=False, comparisons=[("aware", "nobody", "sigma")])
    assert not (tmp_path / "ev").exists()


def test_the_observing_gain_is_shown_per_training_seed_with_its_spread() -> None:
    from cim_gym.evaluation.report import _observing_lines, _Table, split_seed

    assert split_seed("blockdrop-sigma-seed12") == ("blockdrop-sigma", 12) and split_seed("x-seedy") == ("x-seedy", 0)
    gains = {"p": 2.0, "p-seed1": 5.0}  # per chip: the policy is this many points above its twin
    rows = [{"method": m, "sigma_index": s, "chip": c, "accuracy": 50.0 + (gains.get(m, 0.0) if s else 0.0),
             "total_macs": 10.0} for m in ("p", "t", "p-seed1", "t-seed1") for s in range(2) for c in range(3)]
    acc, macs = _Table(rows, [0.0, 0.1], 3, "accuracy"), _Table(rows, [0.0, 0.1], 3, "total_macs")
    text = "\n".join(_observing_lines([("p", "t", "sigma"), ("p-seed1", "t-seed1", "sigma")], acc, macs,
                                       [0.0, 0.1], "σ 0 | σ 0.1"))
    assert "| p | t | sigma | 1.0 ± 0.0 | 0.0 ± 0.0 | 2.0 ± 0.0 | +0 |" in text
    assert "| p | t | seed 0: 1.0 ± 0.0, seed 1: 2.5 ± 0.0 | +1.8 | 1.5 |" in text


def test_depths_of_a_folder_count_standard_recipe_backbones_only(tmp_path: Path) -> None:
    from cim_gym.evaluation.grids import shipped_depths

    assert shipped_depths("fashion-mnist") == [8, 20, 32, 56]
    # a folder holding only a recipe variant has no standard model to measure or sweep
    sidecar = SHIPPED_DIR / "fashion-mnist-resnet20-blockdrop-seed1.json"
    (tmp_path / sidecar.name).write_text(sidecar.read_text())
    tensors = SHIPPED_DIR / json.loads(sidecar.read_text())["file"]
    (tmp_path / tensors.name).write_bytes(tensors.read_bytes())
    assert shipped_depths("fashion-mnist", folder=tmp_path) == []
    assert shipped_depths("fashion-mnist", folder=SHIPPED_DIR) == [8, 20, 32, 56]
