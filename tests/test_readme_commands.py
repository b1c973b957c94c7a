"""The README's commands run, in order, as a new user would type them after set-up.

Every fenced ``bash`` block of README.md is run by bash, in a fresh working folder, one block after
the other (so a later block may use what an earlier one wrote, as the README's reader does). The first
block is set-up and this test suite itself; it is checked to be exactly that and skipped.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SETUP = ["bash scripts/setup.sh", "python3 -m pytest -q"]


def blocks() -> list[str]:
    return re.findall(r"^```bash\n(.*?)^```", (ROOT / "README.md").read_text(), flags=re.S | re.M)


def _commands(block: str) -> list[str]:
    """The commands of a block: comments dropped, backslash continuations joined."""
    text = re.sub(r"\\\n\s*", " ", block)
    return [re.sub(r"\s+#.*$", "", line).strip() for line in text.splitlines() if line.strip()]


def test_the_first_block_is_setup_and_tests():
    assert _commands(blocks()[0]) == SETUP


@pytest.mark.usefixtures("smollm2")
def test_every_readme_block_runs_in_order(tmp_path):
    said = []
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    for k, block in enumerate(blocks()[1:], start=2):
        run = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=1200)
        assert run.returncode == 0, f"README bash block {k} failed:\n{block}\n{run.stdout[-3000:]}{run.stderr[-3000:]}"
        assert "Traceback" not in run.stderr, run.stderr
        said.append(run.stdout)
    out = "\n".join(said)
    # the first hour: the main job, the range example and the extract -> bake path all steer visibly
    assert out.count("strength (visible)") >= 4, out
    assert "strength (negligible)" not in out and "strength (destructive)" not in out
    assert "PASS" in out and "would upload" in out  # verify, and push --dry-run
    assert (tmp_path / "exported" / "smollm2-love.gguf").is_file()
    assert not (tmp_path / "eval_out").exists()  # every output lands in exported/
