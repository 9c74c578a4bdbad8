"""The "cupy" backend: hand-written CUDA C kernels (src/sympow/kernels/*.cu) loaded by cupy.RawModule.

Takes CuPy arrays and PyTorch CUDA tensors (through DLPack, no copy; the result comes back as a torch
tensor); Numba device arrays are no arrays of the array API standard and are refused by validation
(wrap them with ``cupy.asarray``). Coverage: kernel ``sympow`` with
p = 1, 2, 4 and ``identity``; log-gates; rotary (angles accumulated on the host side in float64 by the
specification, the kernels take cos and sin); normalised or not, any eps; initial and final state; float32,
float16 and bfloat16 inputs with float32 accumulation; d, e <= 128. Forms: ``recurrent`` (decode and
prefill) and ``chunked``; ``auto`` runs the chunked kernels whatever the FLOP model picks (every form is
the same function). The final State holds S, z, log_scale in float32 (true sums exp(log_scale) (S, z))
and mu in float64. Anything else gets a reason from ``supports``.
"""

from __future__ import annotations

import math
from typing import Any

from ..kernels import cuda_sources
from ..kernels.cupy_launch import check_shapes
from ..spec import Request, State

LIBRARIES = ("cupy", "torch")


def unavailable() -> str | None:
    """Why the kernels cannot run here (no CuPy, no CUDA driver or no GPU), or None."""
    try:
        import cupy
    except ImportError as error:  # pragma: no cover - the registry checks `requires` first
        return f"cupy does not import: {error}"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as error:  # CUDARuntimeError: no driver
        return f"no CUDA driver or GPU for CuPy: {error}"
    return None if count > 0 else "CuPy sees no GPU"


def _dtype_name(request: Request) -> str:
    return str(request.dtype).rsplit(".", 1)[-1]


def supports(request: Request) -> str | None:
    """None if the kernels cover ``request``, else the reason (the module doc lists the coverage)."""
    if request.cu_seqlens is not None:
        return "packed sequences (cu_seqlens) are not covered by the CuPy kernels"
    kernel = request.kernel
    if kernel.name == "identity":
        power = 1
    elif kernel.name == "sympow":
        power = kernel.degrees[0]
    else:
        return f"the CuPy kernels cover kernels 'sympow' and 'identity', not {kernel.name!r}"
    if request.proportions is not None:
        return "the CuPy kernels do not cover proportions"
    dtype = _dtype_name(request)
    if dtype not in cuda_sources.CUDA_TYPES:
        return f"the CuPy kernels cover dtypes {sorted(cuda_sources.CUDA_TYPES)}, not {dtype}"
    reason = check_shapes(request.d, request.e, math.prod(request.batch_shape), power)
    if reason is not None:
        return reason
    if request.form == "parallel":
        return "the CuPy kernels implement the recurrent and chunked forms, not 'parallel'"
    if request.state_dtype != "float32":
        return (
            f"the CuPy kernels keep a float32 state; this call's state path is {request.state_dtype} "
            "(state_dtype='float64', or the default above degree 4: math.md 9)"
        )
    if request.library not in LIBRARIES:
        return f"the CuPy kernels take {list(LIBRARIES)} arrays, not {request.library}"
    if request.library == "torch":
        arrays = [request.q, request.k, request.v, request.log_gate, request.rotary]
        if request.initial_state is not None:
            arrays += [request.initial_state.S, request.initial_state.z]
        arrays = [x for x in arrays if x is not None]
        if any(x.device.type != "cuda" for x in arrays):
            return "the CuPy kernels take CUDA tensors only"
        if any(x.requires_grad for x in arrays):
            return "the CuPy kernels have no backward pass (an input requires grad)"
    return None


def run(request: Request, form: str) -> tuple[Any, State | None]:
    """(y, State or None) in the library of the inputs; ``form`` "recurrent", else the chunked kernels."""
    reason = supports(request)
    if reason is not None:
        raise ValueError(f"backend 'cupy' cannot run this call: {reason}")
    import cupy

    from ..kernels import cupy_launch as launch

    library = request.library
    to_cupy = launch.to_cupy
    q = to_cupy(request.q)
    device_id = q.device.id
    with cupy.cuda.Device(device_id), _stream_of(request):
        state = request.initial_state
        if state is not None:
            state = State(
                S=to_cupy(state.S), z=to_cupy(state.z),
                mu=None if state.mu is None else to_cupy(state.mu), log_scale=to_cupy(state.log_scale),
            )  # fmt: skip
        optional = {
            name: None if x is None else to_cupy(x)
            for name, x in (("log_gate", request.log_gate), ("rotary", request.rotary))
        }
        power = 1 if request.kernel.name == "identity" else request.kernel.degrees[0]
        dtype = _dtype_name(request)
        ops, mu_end = launch.prepare_operands(
            cupy, q, to_cupy(request.k), to_cupy(request.v), dtype=dtype,
            batch_shape=request.batch_shape, power=power, scale=request.scale,
            rotary_layout=request.rotary_layout, normalize=request.normalize, eps=request.eps,
            state=state, **optional,
        )  # fmt: skip
        launcher = launch.CupyLauncher(device_id)
        table = launch.device_table(request.d, power, device_id)
        if form == "recurrent":
            y, S, z, log_scale = launch.run_recurrent(cupy, launcher, ops, table, 4 * launcher.sm_count)
        else:
            chunk = launch.chunk_for(request.chunk_size, ops.T, ops.d, ops.e, launcher.max_shared_bytes)
            y, S, z, log_scale = launch.run_chunked(cupy, launcher, ops, table, chunk)
    batch = request.batch_shape
    y = launch.from_cupy(y.reshape(*batch, request.T, request.e), library, dtype)
    if not request.return_state:
        return y, None
    D = ops.D
    back = launch.from_cupy
    final = request.state_class(
        S=back(S.reshape(*batch, D, request.e), library, "float32"),
        z=back(z.reshape(*batch, D), library, "float32"),
        mu=None if mu_end is None else back(cupy.ascontiguousarray(mu_end), library, "float64"),
        log_scale=back(log_scale.reshape(batch), library, "float32"),
    )
    return y, final


def _stream_of(request: Request) -> Any:
    """For torch tensors, run on torch's current stream (so that the kernels are ordered with torch's
    work); otherwise on CuPy's current stream."""
    import contextlib

    if request.library != "torch":
        return contextlib.nullcontext()
    import cupy
    import torch

    return cupy.cuda.ExternalStream(torch.cuda.current_stream(request.q.device).cuda_stream)
