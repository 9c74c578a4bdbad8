"""Run a script under JAX's default configuration, without x64, in its own process: the test session
enables x64 before any JAX array exists (tests/conftest.py), and that cannot be undone in-process."""

from __future__ import annotations

import subprocess
import sys

import pytest


def run_without_x64(script: str) -> None:
    """Run ``script`` with JAX_ENABLE_X64=0 on the CPU; it must exit 0 and print "ok" last."""
    pytest.importorskip("jax")
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
        env={"JAX_ENABLE_X64": "0", "JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]
