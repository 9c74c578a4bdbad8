"""Kernel tests: where no GPU is present, Numba runs its CUDA simulator.

NUMBA_ENABLE_CUDASIM is read once, when Numba is first imported, so it is set here, at collection, before
any test imports Numba. Nothing else in the suite imports Numba (only ``sympow.kernels.numba_*`` and
``sympow.backends.numba_cuda`` do, lazily), and the "numba" backend takes NumPy arrays only when it is
named through ``sympow.backends.use``, so setting it in every pytest-xdist worker changes no other test.

An explicit NUMBA_ENABLE_CUDASIM in the environment wins. Without one, the simulator is on unless the CUDA
driver reports a device (probed through ctypes, which imports nothing): on a GPU machine the same tests run
on the GPU, and so do the ``gpu``-marked parity tests.
"""

from __future__ import annotations

import ctypes
import os


def _gpu_present() -> bool:
    try:
        driver = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    count = ctypes.c_int(0)
    if driver.cuInit(0) != 0 or driver.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return False
    return count.value > 0


os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "0" if _gpu_present() else "1")
