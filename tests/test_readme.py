"""The README stays true as the code changes: its generated tables and the commands it names."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from cim_gym.backbones import shipped, train
from cim_gym.hardware import docs

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def block(name: str) -> str:
    match = re.search(rf"<!-- {name}:start -->\n(.*?)\n<!-- {name}:end -->", README, re.S)
    assert match, f"README.md has no {name} block"
    return match.group(1).strip()


@pytest.mark.parametrize(("name", "command", "make"), [
    ("hardware-docs", "python -m cim_gym.hardware.docs", docs.markdown),
    ("shipped-table", "python -m cim_gym.backbones.shipped table", shipped.table),
])
def test_generated_blocks_match_their_command(name: str, command: str, make) -> None:
    assert block(name) == make().strip(), f"README block {name!r} is stale: paste the output of `{command}`"


def test_the_test_command_is_the_one_ci_runs() -> None:
    assert ".venv/bin/python -m pytest -q" in README
    assert "\npython -m pytest -q\n" in (ROOT / ".ci" / "run").read_text()


def test_named_modules_and_scripts_exist() -> None:
    modules = set(re.findall(r"python -m (cim_gym[\w.]*)", README))
    scripts = set(re.findall(r"python ((?:benchmarks|examples)/\w+\.py)", README))
    assert modules and scripts
    for module in modules:
        assert (ROOT / (module.replace(".", "/") + ".py")).is_file(), module
    for script in scripts:
        assert (ROOT / script).is_file(), script


def test_training_commands_parse() -> None:
    commands = re.findall(r"^python -m cim_gym\.backbones\.train (.*?)\s*(?:#.*)?$", README, re.M)
    assert len(commands) >= 3
    for args in commands:
        train.parse_args(shlex.split(args))


def test_the_environments_example_runs() -> None:
    example = next(code for code in re.findall(r"```python\n(.*?)```", README, re.S) if "gym.make(" in code)
    exec(compile(example, "README.md", "exec"), {})
