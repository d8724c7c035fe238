"""``train_agent.py`` end to end: every algorithm with a tiny budget in a subprocess, the run folder it writes,
``load_policy``, Ctrl-C and ``--resume``, and bad arguments."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from agents import RunFolderError, load_policy

ROOT = Path(__file__).resolve().parents[2]
SMALL = ["--dataset", "digits", "--sigmas", "0", "0.1", "--chips-per-sigma", "1", "--report-chips", "1",
         "--report-images", "40", "--no-progress"]


def train_agent_main(argv: list[str]) -> int:
    """``train_agent.main`` in this process (the script is a file at the repository root, not a package module)."""
    spec = importlib.util.spec_from_file_location("train_agent", ROOT / "train_agent.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module.main(argv)


def train(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ROOT / "train_agent.py"), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})


ALGOS = {
    "reinforce-blockdrop": ["--algo", "reinforce", "--depth", "8", "--steps", "640", "--batch-size", "64",
                            "--finetune-batch-size", "32"],
    "reinforce-exit": ["--algo", "reinforce", "--env", "early-exit", "--observe", "both", "--steps", "256",
                       "--batch-size", "64", "--finetune-batch-size", "32"],
    "reinforce-thresholds": ["--algo", "reinforce", "--env", "exit-thresholds", "--obs-mode", "image", "--no-sigma",
                             "--steps", "256", "--batch-size", "64", "--finetune-batch-size", "32"],
    "ppo": ["--algo", "ppo", "--depth", "8", "--steps", "256", "--num-envs", "32"],
    "a2c": ["--algo", "a2c", "--env", "exit-thresholds", "--steps", "256", "--num-envs", "32"],
    "dqn": ["--algo", "dqn", "--steps", "256", "--num-envs", "32"],
    "sac": ["--algo", "sac", "--steps", "128", "--num-envs", "32"],
}


@pytest.mark.parametrize("name", list(ALGOS))
def test_each_algorithm_writes_a_run_folder_that_load_policy_reads(name: str, tmp_path: Path) -> None:
    out = tmp_path / name
    done = train(*ALGOS[name], *SMALL, "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| sigma | accuracy | full path |" in done.stdout and f"run folder: {out}" in done.stdout
    meta = json.loads((out / "run.json").read_text())
    assert meta["status"] == "complete" and meta["wall_time_s"] > 0
    assert meta["env_config"]["sigmas"] == [0.0, 0.1] and meta["package_version"]
    assert len(meta["backbone_sha256"]) == 64  # a policy is never evaluated on a backbone retrained since
    for file in ("policy.safetensors", "metrics.csv", "evaluation.csv", "evaluation.md"):
        assert (out / file).is_file(), file
    assert any((out / "tb").rglob("events.out.tfevents.*"))

    policy = load_policy(out)
    assert policy.env_id == meta["env_id"] and policy.algo == meta["algo"] and policy.decision_macs > 0
    import gymnasium as gym

    envs = gym.make_vec(policy.env_id, num_envs=8, vectorization_mode="vector_entry_point", **policy.env_config)
    obs, _ = envs.reset(seed=0)
    actions = policy(obs)
    assert np.array_equal(actions, policy.act(obs, deterministic=True))  # greedy is deterministic
    envs.step(actions)  # the env accepts what the policy returns
    assert envs.action_space.contains(np.asarray(actions, dtype=envs.action_space.dtype))


def test_ctrl_c_leaves_a_loadable_checkpoint_that_resume_finishes(tmp_path: Path) -> None:
    out = tmp_path / "interrupted"
    args = ["--algo", "reinforce", "--depth", "8", "--steps", "9600", "--batch-size", "32", "--finetune-share", "0",
            *SMALL, "--out", str(out)]
    # a shell that starts the suite in the background passes SIGINT on ignored; Ctrl-C in a terminal is not
    proc = subprocess.Popen([sys.executable, str(ROOT / "train_agent.py"), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while not (out / "metrics.csv").exists() or len((out / "metrics.csv").read_text().splitlines()) < 3:
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-2000:]
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-2000:]
    meta = json.loads((out / "run.json").read_text())
    assert meta["status"] == "interrupted" and 0 < meta["progress"]["updates"] < meta["progress"]["of"]
    load_policy(out)  # loadable as it is

    assert train(*args).returncode != 0  # the same --out without --resume is refused, not overwritten
    resumed = train(*args, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    meta = json.loads((out / "run.json").read_text())
    assert meta["status"] == "complete" and meta["progress"]["updates"] == meta["progress"]["of"]
    rows = (out / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("stage,") and len(rows) - 1 >= meta["progress"]["of"]


@pytest.mark.parametrize("args, needle", [
    (["--algo", "nope"], "--algo"),
    (["--steps", "0"], "--steps"),
    (["--alpha", "nan"], "--alpha"),
    (["--sigmas", "0", "x"], "--sigmas"),
    (["--algo", "dqn", "--env", "blockdrop"], "--algo dqn"),
    (["--algo", "sac", "--env", "early-exit"], "--algo sac"),
    (["--algo", "ppo", "--batch-size", "64"], "--batch-size"),
    (["--env", "CartPole-v1"], "--env"),
    (["--cim", "{not json"], "--cim"),
    (["--alpha", "0.3"], "alpha"),
    (["--dataset", "imagenet"], "dataset"),
    (["--sigmas", "-0.1"], "sigmas"),
    (["--report-images", "-1"], "--report-images"),
])
def test_bad_arguments_exit_non_zero_naming_the_option(args: list[str], needle: str, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        train_agent_main([*args, "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and needle in err, err[-2000:]
    assert not (tmp_path / "run").exists()  # a refused command leaves no run folder behind


def test_load_policy_refuses_what_is_not_a_run(tmp_path: Path) -> None:
    with pytest.raises(RunFolderError, match="run.json"):
        load_policy(tmp_path)
    (tmp_path / "run.json").write_text("{broken")
    with pytest.raises(RunFolderError, match="JSON"):
        load_policy(tmp_path)


def test_help_lists_every_algorithm() -> None:
    done = train("--help", timeout=60)
    assert done.returncode == 0 and all(a in done.stdout for a in ("reinforce", "ppo", "a2c", "dqn", "sac"))
