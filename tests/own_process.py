"""Running one test node in a process of its own (``@pytest.mark.own_process``, conftest.py).

XLA's CPU compiler has crashed (a segmentation fault in ``backend_compile_and_load``) in the shared
test process of a full run, after torch (and its compiler stack), Numba's llvmlite and CUDA bindings had
been loaded by other tests; the same JAX compilations pass in a process that loads only what the test
needs. A node so marked re-runs itself under ``python -m pytest -p no:xdist <nodeid>`` with
``SYMPOW_OWN_PROCESS=1`` and passes when that run passes.
"""

from __future__ import annotations

import os
import subprocess
import sys

FLAG = "SYMPOW_OWN_PROCESS"


def in_own_process() -> bool:
    """True inside the re-run (the node then runs as usual)."""
    return os.environ.get(FLAG) == "1"


def run_alone(nodeid: str, timeout: int = 900) -> None:
    """Run ``nodeid`` in a fresh pytest process; raise AssertionError with its output if it fails."""
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist", nodeid],
        capture_output=True, text=True, timeout=timeout, env={**os.environ, FLAG: "1"},
    )  # fmt: skip
    output = result.stdout[-3000:] + result.stderr[-2000:]
    assert result.returncode == 0 and " passed" in result.stdout, output
