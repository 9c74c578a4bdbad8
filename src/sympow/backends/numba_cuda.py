"""The "numba" backend: the Numba CUDA kernels of ``sympow.kernels`` (recurrent and chunked forms).

Coverage: kernel ``sympow`` with power 2 or 4, and ``identity``; log-gates, rotary (either layout),
normalised or not, eps, initial and final state; float32, float16 and bfloat16 inputs (computed in
float32, the state kept in float32); head dimensions d, e <= 128; no proportions. Arrays: PyTorch CUDA
tensors and CuPy arrays (viewed by Numba without a copy; the result is of the inputs' library). Under the
Numba CUDA simulator (NUMBA_ENABLE_CUDASIM=1), and only there, NumPy arrays are taken, so that the
kernels' logic is tested on a machine without a GPU; they are taken only when the backend is named (the
``backend="numba"`` argument, ``sympow.backends.use("numba")`` or SYMPOW_BACKEND=numba: ``supports`` is one
rule for the three), never by automatic choice (``automatic``: it would send every NumPy call of a process
with the simulator on to this slow path). Numba's own device arrays are refused by the input checks
(``spec.checks``): they have no array API namespace; CuPy and PyTorch view them without a copy.

Form "auto" runs the recurrent kernel for a few tokens (the decode path) and the chunked ones beyond; an
explicit form "parallel" is refused, so automatic choice routes it elsewhere.
"""

from __future__ import annotations

from typing import Any

from ..spec import Request, State

POWERS = (2, 4)
MAX_HEAD_DIM = 128


def _simulated() -> bool:
    from ..kernels.numba_launch import simulated

    return simulated()


def unavailable() -> str | None:
    """None where the kernels can run: numba-cuda importable, and a GPU with libNVVM or the simulator."""
    try:
        from numba import cuda
    except ImportError as error:
        return f"numba-cuda is not importable ({error})"
    if _simulated():
        return None
    if not cuda.is_available():
        return "no CUDA GPU is visible to Numba (NUMBA_ENABLE_CUDASIM=1 runs the simulator instead)"
    from numba.cuda.cudadrv import nvvm

    if not nvvm.is_available():
        return "libNVVM is not found, so Numba cannot compile the kernels (install nvidia-cuda-nvcc)"
    return None


def _library_refusal(request: Request) -> str | None:
    library = request.library
    simulated = _simulated()
    if library == "numpy":
        if not simulated:
            return "numpy arrays live on the host; it takes CUDA arrays (numpy only in the Numba simulator)"
        return None
    if library not in ("torch", "cupy"):
        return f"it takes PyTorch CUDA tensors and CuPy arrays, not {library} arrays"
    if simulated:
        return f"the Numba CUDA simulator (NUMBA_ENABLE_CUDASIM=1) takes numpy arrays, not {library} arrays"
    if library == "torch" and request.device.type != "cuda":
        return f"torch tensors are on {request.device}; it takes CUDA tensors"
    return None


def supports(request: Request) -> str | None:
    """None if the kernels compute ``request``, else why not (see the module doc for the coverage)."""
    if request.cu_seqlens is not None:
        return "packed sequences (cu_seqlens) are not covered by the numba kernels"
    reason = _library_refusal(request)
    if reason is not None:
        return reason
    kernel = request.kernel
    if not (kernel.name == "identity" or (kernel.name == "sympow" and kernel.degrees[0] in POWERS)):
        power = f" with power {kernel.degrees[-1]}" if kernel.name in ("sympow", "taylor") else ""
        return (
            f"kernel {kernel.name!r}{power} is not covered: the numba kernels take 'sympow' with power "
            f"in {POWERS} and 'identity'"
        )
    if request.proportions is not None:
        return "proportions are not covered by the numba kernels"
    if request.d > MAX_HEAD_DIM or request.e > MAX_HEAD_DIM:
        return f"head dimensions d = {request.d}, e = {request.e} exceed the kernels' limit {MAX_HEAD_DIM}"
    xp = request.xp
    if request.dtype not in (xp.float32, xp.float16, getattr(xp, "bfloat16", xp.float16)):
        return f"dtype {request.dtype} is not covered: the kernels take float32, float16 and bfloat16"
    if request.form == "parallel":
        return "form 'parallel' is not implemented by the numba kernels (they run 'recurrent' and 'chunked')"
    if request.state_dtype != "float32":
        return (
            f"the numba kernels keep a float32 state; this call's state path is {request.state_dtype} "
            "(state_dtype='float64', or the default above degree 4: math.md 9)"
        )
    return None


def automatic(request: Request) -> str | None:
    """Why automatic choice passes over a request that ``supports`` accepts: NumPy arrays, which only the
    simulator takes, run here only when the backend is named."""
    if request.library == "numpy":
        return (
            "under the Numba CUDA simulator it takes numpy arrays only when named (backend='numba', "
            "sympow.backends.use('numba') or SYMPOW_BACKEND=numba)"
        )
    return None


def run(request: Request, form: str) -> tuple[Any, State | None]:
    """(y, final state or None); form "parallel" (what "auto" may resolve to) runs the backend's choice."""
    from ..kernels import numba_launch

    if form == "parallel":
        form = numba_launch.auto_form(request.T)
    return numba_launch.run(request, form)
