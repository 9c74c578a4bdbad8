"""The CUDA C sources and every template instantiation, in one place.

Both the CuPy loader (``cupy_launch``) and the NVRTC compile test read this module, so that what the tests
compile is exactly what CuPy loads: each source is compiled with the name expressions of its kernels,
e.g. ``sympow_chunk_states<__nv_bfloat16, 2>``, and the lowered (mangled) names come back from NVRTC.

Instantiations: input dtypes float, __half, __nv_bfloat16 (accumulation in float32) times powers
P = 1 (``identity`` and ``sympow`` p = 1), 2 and 4 for every kernel templated on P.
"""

from __future__ import annotations

import os
import sys
from importlib import resources
from pathlib import Path

KERNEL_DIR = Path(str(resources.files("sympow.kernels")))
COMMON_HEADER = "sympow_common.cuh"

# dtype name of the arrays -> CUDA C type of the template argument
CUDA_TYPES = {"float32": "float", "float16": "__half", "bfloat16": "__nv_bfloat16"}
POWERS = (1, 2, 4)

# source file -> {kernel: whether it is templated on P as well as on the dtype}
KERNELS = {
    "sympow_chunked.cu": {"sympow_chunk_states": True, "sympow_chunk_output": True},
    "sympow_recurrent.cu": {"sympow_recurrent_state": True, "sympow_recurrent_output": False},
}
SOURCES = tuple(KERNELS)
HEADERS = (COMMON_HEADER,)

# Options for NVRTC (CuPy adds the architecture of the device itself).
COMPILE_OPTIONS = ("--std=c++17",)


def name_expression(kernel: str, dtype: str, power: int | None = None) -> str:
    """The C++ name of one instantiation, e.g. ``sympow_chunk_states<__half, 2>``."""
    if dtype not in CUDA_TYPES:
        raise ValueError(f"dtype must be one of {sorted(CUDA_TYPES)}, got {dtype!r}")
    templated_on_power = next(
        (on_power for kernels in KERNELS.values() for name, on_power in kernels.items() if name == kernel),
        None,
    )
    if templated_on_power is None:
        raise ValueError(
            f"kernel must be one of {[k for ks in KERNELS.values() for k in ks]}, got {kernel!r}"
        )
    if not templated_on_power:
        return f"{kernel}<{CUDA_TYPES[dtype]}>"
    if power not in POWERS:
        raise ValueError(f"power must be one of {POWERS} for {kernel}, got {power!r}")
    return f"{kernel}<{CUDA_TYPES[dtype]}, {power}>"


def name_expressions(source: str) -> tuple[str, ...]:
    """Every instantiation of the kernels of ``source``."""
    names = []
    for kernel, on_power in KERNELS[source].items():
        for dtype in CUDA_TYPES:
            if on_power:
                names.extend(name_expression(kernel, dtype, p) for p in POWERS)
            else:
                names.append(name_expression(kernel, dtype))
    return tuple(names)


def source_of(kernel: str) -> str:
    """The file that defines ``kernel``."""
    for source, kernels in KERNELS.items():
        if kernel in kernels:
            return source
    raise ValueError(f"no source defines kernel {kernel!r}")


def read_source(source: str) -> str:
    """The text of a source; its ``#include "sympow_common.cuh"`` is found through ``include_dirs``."""
    return (KERNEL_DIR / source).read_text()


def include_dirs() -> list[str]:
    """Folders with cuda_fp16.h and cuda_bf16.h for NVRTC, then the kernels' own folder.

    Looked up in this order: the nvidia-cuda-runtime wheel (nvidia/cu13/include or nvidia/cuda_runtime/
    include in site-packages), $CUDA_PATH/include or $CUDA_HOME/include, /usr/local/cuda/include.
    """
    found = []
    for root in map(Path, sys.path):
        for sub in ("nvidia/cu13/include", "nvidia/cuda_runtime/include"):
            candidate = root / sub
            if (candidate / "cuda_fp16.h").is_file() and (candidate / "cuda_bf16.h").is_file():
                found.append(str(candidate))
    for variable in ("CUDA_PATH", "CUDA_HOME"):
        if os.environ.get(variable):
            found.append(str(Path(os.environ[variable]) / "include"))
    found.append("/usr/local/cuda/include")
    usable = [f for f in dict.fromkeys(found) if (Path(f) / "cuda_bf16.h").is_file()]
    return [*usable[:1], str(KERNEL_DIR)]
