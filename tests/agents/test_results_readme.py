"""The README's agent results are the stored run folders' own reports (rerun the commands to regenerate both)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results" / "agents"
README = (ROOT / "README.md").read_text()


def block() -> str:
    match = re.search(r"<!-- agents-results:start -->\n(.*?)<!-- agents-results:end -->", README, re.S)
    assert match, "README.md has no agents-results block"
    return match.group(1)


@pytest.mark.parametrize("run", sorted(p.name for p in RESULTS.iterdir() if p.is_dir()))
def test_each_stored_run_is_in_the_readme_as_its_report_says(run: str) -> None:
    meta = json.loads((RESULTS / run / "run.json").read_text())
    assert meta["status"] == "complete"
    rows = (RESULTS / run / "evaluation.md").read_text().split("\n\n")[0].strip().splitlines()[2:]
    text = block()
    if len(rows) > 1:  # a sigma grid: the whole table is quoted
        assert "\n".join(rows) in text, f"the README's table of {run} differs from its evaluation.md"
    else:  # one sigma: a row of the ideal-hardware table
        cells = [c.strip() for c in rows[0].strip("|").split("|")]
        command = re.sub(r" --out \S+", "", meta["command"]).replace(" --no-progress", "")
        assert f"| `{command}` | {cells[4]} | {cells[1]} | {cells[2]} | {cells[5]} of {cells[6]} |" in text
