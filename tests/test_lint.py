"""ruff and mypy are part of the test command (STYLE.md, habit 2)."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_ruff_is_clean() -> None:
    ruff = shutil.which("ruff")
    assert ruff, "ruff is installed by the test extra: pip install '.[test]'"
    r = _run(ruff, "check", "bwfast", "api", "perf", "tests")
    assert r.returncode == 0, r.stdout + r.stderr


def test_mypy_is_clean() -> None:
    r = _run(sys.executable, "-m", "mypy", "--cache-dir", "/tmp/bwfast-mypy-cache",
             "bwfast", "api", "perf")
    assert r.returncode == 0, r.stdout + r.stderr
