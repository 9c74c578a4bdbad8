"""Run the CUDA C kernels on the host: host_emulation.cpp compiled by g++, called through ctypes.

``emulated_launcher()`` returns a ``launch(name, grid, block, args, shared_bytes)`` with the signature of
``sympow.kernels.cupy_launch.CupyLauncher`` that takes NumPy arrays: each array is passed as a pointer
and each NumPy scalar (np.int32, np.float32) by value, as CuPy passes them to a RawKernel. Every thread
of a block runs as a host thread; see host_emulation.cpp for what this checks and what it does not.
"""

from __future__ import annotations

import ctypes
import hashlib
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from sympow.kernels import cuda_sources

HARNESS = Path(__file__).with_name("host_emulation.cpp")
_CTYPES = {np.dtype(np.int32): ctypes.c_int, np.dtype(np.float32): ctypes.c_float}


def compiler_missing() -> str | None:
    """Why the emulator cannot be built here, or None."""
    if shutil.which("g++") is None:
        return "g++ is not installed (the host emulation of the CUDA C kernels needs a C++20 compiler)"
    return None


def build(directory: Path | None = None) -> Path:
    """Compile the harness (once per content of the sources) and return the shared library's path."""
    inputs = [HARNESS, *(cuda_sources.KERNEL_DIR / f for f in (*cuda_sources.SOURCES, *cuda_sources.HEADERS))]
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in inputs)).hexdigest()[:16]
    directory = directory or Path(tempfile.gettempdir()) / "sympow-host-emulation"
    directory.mkdir(parents=True, exist_ok=True)
    library = directory / f"host_emulation-{digest}.so"
    if not library.exists():
        partial = library.with_suffix(f".{digest}.tmp.so")
        command = [
            "g++", "-std=c++20", "-O1", "-shared", "-fPIC", "-pthread",
            f"-I{cuda_sources.KERNEL_DIR}", str(HARNESS), "-o", str(partial),
        ]  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"building the host emulation failed:\n{result.stderr}")
        partial.replace(library)
    return library


class EmulatedLauncher:
    """``launch(name, grid, block, args, shared_bytes)`` on NumPy arrays, on the host."""

    max_shared_bytes = 227 * 1024  # as an H100
    sm_count = 2

    def __init__(self, library: Path) -> None:
        self._library = ctypes.CDLL(str(library))
        self._library.emulate_launch.restype = ctypes.c_int
        self._library.emulate_launch.argtypes = [
            ctypes.c_char_p, ctypes.c_uint, ctypes.c_uint, ctypes.c_uint, ctypes.c_size_t,
            ctypes.POINTER(ctypes.c_void_p),
        ]  # fmt: skip
        self.launched: list[str] = []

    def __call__(
        self, name: str, grid: tuple[int, int], block: int, args: tuple[Any, ...], shared_bytes: int
    ) -> None:
        values = []
        for arg in args:
            if isinstance(arg, np.ndarray):
                if not arg.flags.c_contiguous:
                    raise AssertionError(f"{name}: a non-contiguous array reached the kernel")
                values.append(ctypes.c_void_p(arg.ctypes.data))
            elif isinstance(arg, np.generic) and arg.dtype in _CTYPES:
                values.append(_CTYPES[arg.dtype](arg.item()))
            else:
                raise AssertionError(
                    f"{name}: argument {arg!r} of type {type(arg)} is not an array or scalar"
                )
        pointers = (ctypes.c_void_p * len(values))(
            *(ctypes.cast(ctypes.pointer(v), ctypes.c_void_p) for v in values)
        )
        status = self._library.emulate_launch(name.encode(), grid[0], grid[1], block, shared_bytes, pointers)
        if status == 2:
            raise AssertionError(f"{name} wrote past its {shared_bytes} bytes of shared memory")
        if status != 0:
            raise AssertionError(f"the host emulation has no kernel {name!r}")
        self.launched.append(name)
