"""The thin launcher of the Numba CUDA kernels: shapes, casts, rotary, feature tables, grids.

From a validated request (``spec.checks.Request``) to the kernels' inputs, on the inputs' own library and
device (PyTorch CUDA tensors and CuPy arrays, handed to Numba through ``__cuda_array_interface__`` without
a copy; NumPy arrays under the Numba CUDA simulator):

- q, k, v (and the gates) are broadcast to the batch shape B, flattened to BH = prod(B) sequences and cast
  to float32: float16 and bfloat16 are cast here, so the kernels read float32 only (Numba has no bfloat16).
- Rotary angles are accumulated by ``spec.rotary.accumulate_angles`` (float64 cumulative sum) and applied
  by ``spec.rotary.rotate`` on the library's arrays, exactly as the specification does; then
  y = sigma^{1/2} R(mu_t) x_t.
- The initial state (S, z, log_scale), of any float dtype (the specification's is float64), becomes the
  packed float32 SZ [BH, D, e+1] and M [BH]; the final state is handed back as ``State`` with S, z and
  log_scale in float32 (true sums exp(log_scale) S) and mu in float64.
- The feature table of phi_P (``spec.features.feature_table``) is uploaded once per (d, P, device).

The chunked kernels use chunks of min(chunk_size, 64) tokens (64 bounds their shared memory; every chunk
size computes the same function up to rounding).
"""

from __future__ import annotations

import math
import sys
import warnings
from functools import cache
from typing import Any

import numpy as np

from ..spec.checks import Request
from ..spec.features import feature_table
from ..spec.rotary import accumulate_angles, rotate
from ..spec.state import State
from . import numba_kernels as kernels

MAX_CHUNK = 64
RECURRENT_MAX_T = 8  # "auto" runs the recurrent kernel up to this many tokens, the chunked ones beyond


def simulated() -> bool:
    """Whether Numba runs its CUDA simulator (NUMBA_ENABLE_CUDASIM=1 when Numba was first imported)."""
    from numba import config

    return bool(config.ENABLE_CUDASIM)


def auto_form(T: int) -> str:
    """The form "auto" runs: recurrent for a few tokens (decode), chunked beyond."""
    return "recurrent" if T <= RECURRENT_MAX_T else "chunked"


def launch_config() -> dict[str, int]:
    """Threads per block (TPB), feature tile (R) and row groups of the recurrent block (G, at most).

    The simulator runs every thread as a Python thread, so it gets small blocks."""
    if simulated():
        return {"TPB": 8, "R": 4, "G": 1}
    return {"TPB": 128, "R": 16, "G": 8}


@cache
def _jit(factory: Any, *constants: Any) -> Any:
    from numba import cuda

    return cuda.jit(factory(*constants))


class _Device:
    """The inputs' library and device as Numba sees them: the argument wrapper, stream and context."""

    def __init__(self, request: Request) -> None:
        self.library = request.library
        self.device = request.device
        self.simulated = simulated()

    def index(self) -> int:
        if self.library == "torch":
            return self.device.index if self.device.index is not None else 0
        return int(getattr(self.device, "id", 0))

    def context(self) -> Any:
        from numba import cuda

        if self.simulated:
            import contextlib

            return contextlib.nullcontext()
        return cuda.gpus[self.index()]

    def stream(self) -> Any:
        from numba import cuda

        if self.simulated:
            return 0
        if self.library == "torch":
            pointer = sys.modules["torch"].cuda.current_stream(self.device).cuda_stream
        else:
            pointer = sys.modules["cupy"].cuda.get_current_stream().ptr
        return cuda.external_stream(pointer) if pointer else cuda.default_stream()

    def arg(self, x: Any) -> Any:
        """A kernel argument viewing x (no copy)."""
        if self.simulated:  # the simulator copies arguments back after a launch: read-only views need a copy
            x = np.asarray(x)
            return x if x.flags.writeable else np.array(x)
        from numba import cuda

        return cuda.as_cuda_array(x, sync=False)  # launched on the producer's current stream

    def key(self) -> Any:
        return "simulator" if self.simulated else (self.library, self.index())


_tables: dict[tuple[Any, ...], tuple[Any, Any]] = {}


def feature_tables(d: int, P: int, where: _Device) -> tuple[Any, Any]:
    """(idx int32 [D, P], coef float32 [D]) of phi_P on R^d, on the device; uploaded once per key."""
    key = (d, P, where.key())
    if key not in _tables:
        indices, coefficients = feature_table(d, P)
        idx = np.ascontiguousarray(np.array(indices, dtype=np.int32).reshape(len(indices), P))
        coef = np.asarray(coefficients, dtype=np.float32)
        if not where.simulated:
            from numba import cuda

            idx, coef = cuda.to_device(idx), cuda.to_device(coef)
        _tables[key] = (idx, coef)
    return _tables[key]


def _contiguous(x: Any, library: str) -> Any:
    if library == "torch":
        return x.contiguous()
    return sys.modules[library].ascontiguousarray(x)


def _detached(x: Any) -> Any:
    return x.detach() if hasattr(x, "detach") else x


def prepare(request: Request) -> dict[str, Any]:
    """The kernels' inputs as contiguous float32 arrays of the request's library (see the module doc):
    yq, yk [BH, T, d], v [BH, T, e], g [BH, T], sz [BH, D, e+1], scale [BH]; and mu_end [*B, d/2] or None."""
    xp, batch = request.xp, request.batch_shape
    T, d, e = request.T, request.d, request.e
    BH, dev, work = math.prod(batch), request.device, xp.float32

    def lead(x: Any, tail: tuple[int, ...]) -> Any:
        return xp.broadcast_to(xp.astype(_detached(x), work), (*batch, *tail))

    def flat(x: Any, tail: tuple[int, ...]) -> Any:
        return _contiguous(xp.reshape(x, (BH, *tail)), request.library)

    q, k, v = lead(request.q, (T, d)), lead(request.k, (T, d)), lead(request.v, (T, e))
    state = request.initial_state
    mu_end = None
    if request.uses_rotary:
        mu0 = None if state is None or state.mu is None else _detached(state.mu)
        increments = (
            xp.zeros((*batch, T, d // 2), dtype=work, device=dev)
            if request.rotary is None
            else _detached(request.rotary)
        )
        mu, mu_end = accumulate_angles(increments, mu0, xp)
        mu = xp.broadcast_to(mu, (*batch, T, d // 2))
        mu_end = xp.broadcast_to(mu_end, (*batch, d // 2))
        cos, sin = xp.astype(xp.cos(mu), work), xp.astype(xp.sin(mu), work)
        q = rotate(q, cos, sin, request.rotary_layout, xp)
        k = rotate(k, cos, sin, request.rotary_layout, xp)
    root_scale = math.sqrt(request.scale)
    if request.log_gate is None:
        g = xp.zeros((BH, T), dtype=work, device=dev)
    else:
        g = flat(lead(request.log_gate, (T,)), (T,))
    D = request.feature_size
    if state is None:
        sz = xp.zeros((BH, D, e + 1), dtype=work, device=dev)
        scale = xp.full((BH,), -math.inf, dtype=work, device=dev)
    else:
        S, z = lead(state.S, (D, e)), lead(state.z, (D,))
        # Fresh copies: the kernels update SZ and M in place, and the caller's state must stay as it was.
        sz = xp.asarray(flat(xp.concat([S, z[..., None]], axis=-1), (D, e + 1)), copy=True)
        scale = xp.asarray(flat(lead(state.log_scale, ()), ()), copy=True)
    return {
        "yq": flat(q * root_scale, (T, d)), "yk": flat(k * root_scale, (T, d)), "v": flat(v, (T, e)),
        "g": g, "sz": sz, "scale": scale, "mu_end": mu_end,
    }  # fmt: skip


def run(request: Request, form: str) -> tuple[Any, State | None]:
    """(y in the input dtype, final State or None) of ``request`` in ``form`` ("recurrent" or "chunked")."""
    from numba.core.errors import NumbaPerformanceWarning

    xp, batch = request.xp, request.batch_shape
    T, d, e = request.T, request.d, request.e
    P = request.kernel.degrees[0]
    where = _Device(request)
    inputs = prepare(request)
    y = xp.zeros((math.prod(batch), T, e), dtype=xp.float32, device=request.device)
    with where.context(), warnings.catch_warnings():
        # Small grids on a large GPU are the caller's choice, not a defect worth a warning.
        warnings.simplefilter("ignore", NumbaPerformanceWarning)
        idx, coef = feature_tables(d, P, where)
        options = (np.float32(request.eps), bool(request.normalize))
        if form == "recurrent":
            _recurrent(inputs, y, idx, coef, P, d, e, options, where)
            final_scale = inputs["scale"]
        else:
            final_scale = _chunked(request, inputs, y, idx, coef, P, options, where)
    out = xp.astype(xp.reshape(y, (*batch, T, e)), request.dtype)
    if not request.return_state:
        return out, None
    sz, D = inputs["sz"], request.feature_size
    state = request.state_class(
        S=xp.reshape(sz[..., :e], (*batch, D, e)),
        z=xp.reshape(sz[..., e], (*batch, D)),
        mu=inputs["mu_end"],
        log_scale=xp.reshape(final_scale, batch),
    )
    return out, state


def _recurrent(
    inputs: dict[str, Any],
    y: Any,
    idx: Any,
    coef: Any,
    P: int,
    d: int,
    e: int,
    options: tuple,
    where: _Device,
) -> None:
    """One block per sequence; SZ and M are updated in place into the final state."""
    config = launch_config()
    E1 = e + 1
    G = max(1, min(config["G"], 256 // E1))
    kernel = _jit(kernels.recurrent_kernel, P, d, E1, G)
    a = where.arg
    BH = inputs["yq"].shape[0]
    kernel[BH, (E1, G), where.stream()](
        a(inputs["yq"]), a(inputs["yk"]), a(inputs["v"]), a(inputs["g"]), idx, coef,
        a(inputs["sz"]), a(inputs["scale"]), a(y), *options,
    )  # fmt: skip


def _chunked(
    request: Request,
    inputs: dict[str, Any],
    y: Any,
    idx: Any,
    coef: Any,
    P: int,
    options: tuple,
    where: _Device,
) -> Any:
    """The four steps; returns the final log scale [BH] (SZ is updated in place into the final state)."""
    config = launch_config()
    TPB, R = config["TPB"], config["R"]
    xp, yq = request.xp, inputs["yq"]
    BH, T = yq.shape[0], yq.shape[1]
    d, D, E1 = request.d, idx.shape[0], request.e + 1
    C = min(request.chunk_size, MAX_CHUNK, T)
    n = -(-T // C)

    def empty(*shape: int) -> Any:
        return xp.empty(shape, dtype=xp.float32, device=request.device)

    stats = {name: empty(BH, T) for name in ("lam_q", "inv_q", "lam_k", "inv_k", "from_start", "to_end")}
    chunk_scale, chunk_total = empty(BH, n), empty(BH, n)
    states = empty(BH, n, D, E1)
    entering_scale, final_scale = empty(BH, n), empty(BH)
    a, stream = where.arg, where.stream()

    step0 = _jit(kernels.token_stats_kernel, P, d)
    step0[-(-BH * n // TPB), TPB, stream](
        a(yq), a(inputs["yk"]), a(inputs["g"]), C, *(a(stats[name]) for name in stats),
        a(chunk_scale), a(chunk_total),
    )  # fmt: skip
    step2 = _jit(kernels.chunk_states_kernel, P, d, E1, C, R, TPB)
    step2[BH * n * -(-D // R), TPB, stream](
        a(inputs["yk"]), a(inputs["v"]), idx, coef, a(stats["lam_k"]), a(stats["inv_k"]),
        a(stats["to_end"]), a(chunk_scale), a(states),
    )  # fmt: skip
    step3 = _jit(kernels.scan_kernel)
    width = D * E1
    threads = TPB if where.simulated else 256
    step3[-(-BH * width // threads), threads, stream](
        a(xp.reshape(states, (BH, n, width))), a(chunk_scale), a(chunk_total),
        a(xp.reshape(inputs["sz"], (BH, width))), a(inputs["scale"]), a(entering_scale), a(final_scale),
    )  # fmt: skip
    step4 = _jit(kernels.output_kernel, P, d, E1, C, R, TPB)
    step4[BH * n, TPB, stream](
        a(yq), a(inputs["yk"]), a(inputs["v"]), a(inputs["g"]), idx, coef, a(stats["lam_q"]),
        a(stats["inv_q"]), a(stats["from_start"]), a(states), a(entering_scale), *options, a(y),
    )  # fmt: skip
    return final_scale


def numba_chunked(q: Any, k: Any, v: Any, **options: Any) -> Any:
    """``sympow.attention(q, k, v, form="chunked", backend="numba", **options)``, for benchmarks."""
    from ..api import attention

    return attention(q, k, v, form="chunked", backend="numba", **options)
