"""Helper of the tests that run a Triton kernel on the CPU through Triton's interpreter."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def interpreted(script: str) -> float:
    """Run ``script`` in a fresh process with ``TRITON_INTERPRET=1`` (the interpreter is chosen when a kernel
    is defined, so it cannot be switched on inside this one) and return the number it prints last."""
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "tests")]))
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300, cwd=REPO
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return float(done.stdout.strip().splitlines()[-1])
