"""The backends that run every case here, for tests that enumerate ``sympow.backends.available()``."""

from __future__ import annotations

import os

import sympow


def general_backends() -> list:
    """Available backends, less numba when it runs on Numba's CUDA simulator.

    tests/kernels turns the simulator on in whichever pytest worker runs them; there the numba backend
    takes NumPy arrays only when named through ``use("numba")`` and covers its subset of kernels, which
    tests/kernels checks against the reference. On a GPU machine it is a real backend and stays listed.
    """
    simulated = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"
    return [
        entry
        for entry in sympow.backends.available()
        if entry.available and not (simulated and entry.name == "numba")
    ]
