"""The thin Python layer of the CUDA C kernels: operands, launch configuration, module loading, DLPack.

``prepare_operands`` turns arrays of a NumPy-like namespace ``xp`` (CuPy on a GPU; NumPy for the host
emulation of the tests) into the flat operands of the kernels: q, k [B, T, d] and v [B, T, e] contiguous
in their own dtype (bfloat16 travels as raw int16 bits, as neither CuPy nor NumPy has it), log-gates
[B, T] float32, rotary cos and sin [B, T, d/2] float32, and the initial state S [B, D, e], z [B, D],
log scale [B] float32 (B the flattened broadcast batch).

Rotary angles are accumulated on the host side by ``sympow.spec.rotary.accumulate_angles`` (float64, as
the specification does), and the kernels receive cos and sin of mu_t; the final angle mod 2 pi is the
State's ``mu``. ``run_chunked`` and ``run_recurrent`` launch the kernels through ``launch(name, grid,
block, args, shared_bytes)``: a ``CupyLauncher`` on a GPU, or the host emulator of the tests.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache, lru_cache
from typing import Any

import numpy as np

from . import cuda_sources

HAS_GATE, HAS_ROTARY, INTERLEAVED, HAS_STATE, NORMALIZE = 1, 2, 4, 8, 16  # as in sympow_common.cuh
THREADS = 256
ROWS = 32
MAX_CHUNK = 64
MAX_COLUMNS = 160  # e + 1 <= 160
MAX_HEAD_DIM = 128
MAX_BATCH = 65535  # the grid's y extent
FLOAT = 4

Launch = Callable[[str, tuple[int, int], int, tuple[Any, ...], int], None]


@dataclass(frozen=True)
class Operands:
    """The kernels' inputs (see the module doc); ``dtype`` names the storage of q, k, v and y."""

    q: Any
    k: Any
    v: Any
    dtype: str
    log_gate: Any
    cos: Any
    sin: Any
    S: Any
    z: Any
    log_scale: Any
    power: int
    root_scale: float
    flags: int
    eps: float

    @property
    def B(self) -> int:
        return self.q.shape[0]

    @property
    def T(self) -> int:
        return self.q.shape[1]

    @property
    def d(self) -> int:
        return self.q.shape[2]

    @property
    def e(self) -> int:
        return self.v.shape[2]

    @property
    def D(self) -> int:
        return math.comb(self.d + self.power - 1, self.power)


def storage_dtype(xp: Any, dtype: str) -> Any:
    """The array dtype that holds inputs of ``dtype``: bfloat16 as int16 bits."""
    return xp.int16 if dtype == "bfloat16" else getattr(xp, dtype)


def check_shapes(d: int, e: int, batch: int, power: int) -> str | None:
    """Why the kernels cannot take these sizes, or None."""
    if power not in cuda_sources.POWERS:
        return f"the kernels cover powers {cuda_sources.POWERS}, got power={power}"
    if d > MAX_HEAD_DIM or e > MAX_HEAD_DIM:
        return f"the kernels cover head dims d, e <= {MAX_HEAD_DIM}, got d = {d}, e = {e}"
    if batch > MAX_BATCH:
        return f"the kernels cover at most {MAX_BATCH} batch entries (heads), got {batch}"
    return None


def prepare_operands(
    xp: Any,
    q: Any,
    k: Any,
    v: Any,
    *,
    dtype: str,
    batch_shape: tuple[int, ...],
    power: int,
    scale: float,
    log_gate: Any = None,
    rotary: Any = None,
    rotary_layout: str = "half",
    normalize: bool = True,
    eps: float = 0.0,
    state: Any = None,
) -> tuple[Operands, Any]:
    """(Operands, final rotary angle [*batch, d/2] float64 or None) from arrays of ``xp``.

    q, k [..., T, d] and v [..., T, e] hold ``dtype`` (bfloat16 as int16 bits); log_gate [..., T];
    rotary [..., T, d/2] angle increments; ``state`` a ``sympow.State`` of ``xp`` arrays or None. Leading
    axes broadcast to ``batch_shape``. Arrays already contiguous in the full batch shape are not copied.
    """
    T, d, e = q.shape[-2], q.shape[-1], v.shape[-1]
    reason = check_shapes(d, e, math.prod(batch_shape), power)
    if reason is not None:
        raise ValueError(reason)
    if dtype not in cuda_sources.CUDA_TYPES:
        raise ValueError(f"dtype must be one of {sorted(cuda_sources.CUDA_TYPES)}, got {dtype!r}")
    B = math.prod(batch_shape)
    stored = storage_dtype(xp, dtype)

    def flat(x: Any, tail: tuple[int, ...], as_type: Any) -> Any:
        x = xp.broadcast_to(xp.asarray(x, dtype=as_type), (*batch_shape, *tail))
        return xp.ascontiguousarray(x).reshape((B, *tail))

    flags = NORMALIZE if normalize else 0
    gate = None
    if log_gate is not None:
        gate = flat(log_gate, (T,), xp.float32)
        flags |= HAS_GATE
    cos = sin = mu_end = None
    mu0 = None if state is None else state.mu
    if rotary is not None or mu0 is not None:
        cos, sin, mu_end = _rotary(xp, rotary, mu0, batch_shape, T, d)
        flags |= HAS_ROTARY | (INTERLEAVED if rotary_layout == "interleaved" else 0)
    D = math.comb(d + power - 1, power)
    S = z = log_scale = None
    if state is not None:
        S = xp.array(xp.broadcast_to(xp.asarray(state.S, dtype=xp.float32), (*batch_shape, D, e)))
        z = xp.array(xp.broadcast_to(xp.asarray(state.z, dtype=xp.float32), (*batch_shape, D)))
        log_scale = xp.array(xp.broadcast_to(xp.asarray(state.log_scale, dtype=xp.float32), batch_shape))
        S, z, log_scale = S.reshape(B, D, e), z.reshape(B, D), log_scale.reshape(B)
        flags |= HAS_STATE
    operands = Operands(
        q=flat(q, (T, d), stored), k=flat(k, (T, d), stored), v=flat(v, (T, e), stored), dtype=dtype,
        log_gate=gate, cos=cos, sin=sin, S=S, z=z, log_scale=log_scale, power=power,
        root_scale=math.sqrt(scale), flags=flags, eps=float(eps),
    )  # fmt: skip
    return operands, mu_end


def _rotary(
    xp: Any, rotary: Any, mu0: Any, batch_shape: tuple[int, ...], T: int, d: int
) -> tuple[Any, Any, Any]:
    """cos and sin of mu_t [B, T, d/2] float32 and the final angle [*batch, d/2], accumulated in float64
    by the specification's ``accumulate_angles``."""
    from array_api_compat import array_namespace

    from ..spec.rotary import accumulate_angles

    half = d // 2
    if rotary is None:
        increments = xp.zeros((*batch_shape, T, half), dtype=xp.float64)
    else:
        increments = xp.broadcast_to(xp.asarray(rotary, dtype=xp.float64), (*batch_shape, T, half))
    if mu0 is not None:
        mu0 = xp.broadcast_to(xp.asarray(mu0, dtype=xp.float64), (*batch_shape, half))
    mu, mu_end = accumulate_angles(increments, mu0, array_namespace(increments), float64=True)
    B = math.prod(batch_shape)
    cos = xp.ascontiguousarray(xp.cos(mu).astype(xp.float32)).reshape(B, T, half)
    sin = xp.ascontiguousarray(xp.sin(mu).astype(xp.float32)).reshape(B, T, half)
    return cos, sin, mu_end


@lru_cache(maxsize=32)
def feature_index_table(d: int, power: int) -> np.ndarray:
    """[C(d+p-1, p)] uint32: the sorted multisets of phi_p on R^d in itertools'
    combinations_with_replacement order (``spec.features.feature_table``), index m in byte m.

    Built without a Python loop over features: in lexicographic order the multisets of size p whose
    first index is at least i are a contiguous suffix of those of size p - 1, shifted by one position.
    """
    if d > 256:
        raise ValueError(f"the packed feature table holds indices below 256, got d = {d}")
    rows = np.zeros((1, 0), dtype=np.uint32)  # the single empty multiset
    for _ in range(power):
        if rows.shape[1]:
            starts = np.searchsorted(rows[:, 0], np.arange(d), side="left")
        else:
            starts = np.zeros(d, dtype=np.int64)
        parts = [
            np.concatenate([np.full((len(rows) - start, 1), i, dtype=np.uint32), rows[start:]], axis=1)
            for i, start in enumerate(starts)
        ]
        rows = np.concatenate(parts, axis=0)
    packed = np.zeros(len(rows), dtype=np.uint32)
    for m in range(power):
        packed |= rows[:, m].astype(np.uint32) << np.uint32(8 * m)
    return packed


def states_shared_floats(C: int, d: int, e: int) -> int:
    """Dynamic shared memory of sympow_chunk_states, in floats (the layout in sympow_chunked.cu)."""
    return C * (d + 1) + C * (e + 1) + C * ROWS + 4 * C + 2


def output_shared_floats(C: int, d: int, e: int) -> int:
    """Dynamic shared memory of sympow_chunk_output, in floats."""
    step_one = C * (d + 1) + 2 * C * (C + 1)
    step_four = C * ROWS + ROWS * (e + 1)
    return C * (d + 1) + C * (e + 1) + 6 * C + max(step_one, step_four)


def recurrent_shared_floats(d: int) -> int:
    """Dynamic shared memory of sympow_recurrent_state, in floats."""
    return 2 * d + MAX_COLUMNS + (THREADS // 32) * MAX_COLUMNS + 8


def chunk_for(chunk_size: int, T: int, d: int, e: int, max_shared_bytes: int) -> int:
    """The kernels' chunk: ``chunk_size`` capped at MAX_CHUNK and T, halved until both kernels' shared
    memory fits. Every chunk size computes the same function (math.md section 6)."""
    C = max(1, min(chunk_size, MAX_CHUNK, T))
    while (
        C > 1 and FLOAT * max(states_shared_floats(C, d, e), output_shared_floats(C, d, e)) > max_shared_bytes
    ):
        C //= 2
    if FLOAT * max(states_shared_floats(C, d, e), output_shared_floats(C, d, e)) > max_shared_bytes:
        raise ValueError(
            f"d = {d}, e = {e} need more shared memory per block than the device has ({max_shared_bytes} B)"
        )
    return C


def _dummy(xp: Any, x: Any, dtype: Any) -> Any:
    """x, or a one-element stand-in for an absent operand (the flags tell the kernel not to read it)."""
    return xp.zeros(1, dtype=dtype) if x is None else x


def _common(xp: Any, ops: Operands, table: Any) -> tuple[Any, ...]:
    return (
        _dummy(xp, ops.log_gate, xp.float32),
        _dummy(xp, ops.cos, xp.float32),
        _dummy(xp, ops.sin, xp.float32),
        table,
    )


def run_chunked(xp: Any, launch: Launch, ops: Operands, table: Any, chunk: int) -> tuple[Any, Any, Any, Any]:
    """(y [B, T, e] in the input storage, S [B, D, e], z [B, D], log scale [B]) by the chunked form."""
    B, T, d, e, D = ops.B, ops.T, ops.d, ops.e, ops.D
    C = chunk
    n = -(-T // C)
    f32, i32 = np.float32, np.int32
    gate, cos, sin, table = _common(xp, ops, table)
    S_in = _dummy(xp, ops.S, xp.float32)
    z_in = _dummy(xp, ops.z, xp.float32)
    M_in = _dummy(xp, ops.log_scale, xp.float32)
    entering = xp.empty((B, n, D, e + 1), dtype=xp.float32)
    entering_scale = xp.empty((B, n), dtype=xp.float32)
    S = xp.empty((B, D, e), dtype=xp.float32)
    z = xp.empty((B, D), dtype=xp.float32)
    log_scale = xp.empty((B,), dtype=xp.float32)
    sizes = (i32(T), i32(d), i32(e), i32(D), i32(C), i32(n), f32(ops.root_scale))
    launch(
        cuda_sources.name_expression("sympow_chunk_states", ops.dtype, ops.power),
        (-(-D // ROWS), B), THREADS,
        (ops.k, ops.v, gate, cos, sin, table, S_in, z_in, M_in, entering, entering_scale, S, z,
         log_scale, *sizes, i32(ops.flags)),
        FLOAT * states_shared_floats(C, d, e),
    )  # fmt: skip
    y = xp.empty((B, T, e), dtype=storage_dtype(xp, ops.dtype))
    launch(
        cuda_sources.name_expression("sympow_chunk_output", ops.dtype, ops.power),
        (n, B), THREADS,
        (ops.q, ops.k, ops.v, gate, cos, sin, table, entering, entering_scale, y, *sizes,
         f32(ops.eps), i32(ops.flags)),
        FLOAT * output_shared_floats(C, d, e),
    )  # fmt: skip
    return y, S, z, log_scale


def split_rows(D: int, B: int, target_blocks: int) -> tuple[int, int]:
    """(blocks per head, feature rows per block) of the recurrent kernel: about ``target_blocks`` blocks
    in all, each with at least one row per warp."""
    split = max(1, min(-(-target_blocks // B), -(-D // (THREADS // 32))))
    rows = -(-D // split)
    return -(-D // rows), rows


def run_recurrent(
    xp: Any, launch: Launch, ops: Operands, table: Any, target_blocks: int
) -> tuple[Any, Any, Any, Any]:
    """(y [B, T, e], S [B, D, e], z [B, D], log scale [B]) token by token (decode: T = 1)."""
    B, T, d, e, D = ops.B, ops.T, ops.d, ops.e, ops.D
    f32, i32 = np.float32, np.int32
    gate, cos, sin, table = _common(xp, ops, table)
    # the kernel updates S and z in place: fresh buffers (prepare_operands copied the given state)
    S = xp.zeros((B, D, e), dtype=xp.float32) if ops.S is None else ops.S
    z = xp.zeros((B, D), dtype=xp.float32) if ops.z is None else ops.z
    M_in = _dummy(xp, ops.log_scale, xp.float32)
    log_scale = xp.empty((B,), dtype=xp.float32)
    partial = xp.zeros((B, T, e + 1), dtype=xp.float32)
    m_past, m_own, w_own = (xp.empty((B, T), dtype=xp.float32) for _ in range(3))
    split, rows = split_rows(D, B, target_blocks)
    launch(
        cuda_sources.name_expression("sympow_recurrent_state", ops.dtype, ops.power),
        (split, B), THREADS,
        (ops.q, ops.k, ops.v, gate, cos, sin, table, S, z, M_in, log_scale, partial, m_past, m_own,
         w_own, i32(T), i32(d), i32(e), i32(D), i32(rows), f32(ops.root_scale), i32(ops.flags)),
        FLOAT * recurrent_shared_floats(d),
    )  # fmt: skip
    y = xp.empty((B, T, e), dtype=storage_dtype(xp, ops.dtype))
    launch(
        cuda_sources.name_expression("sympow_recurrent_output", ops.dtype),
        (B * T, 1), 128,
        (ops.v, partial, m_past, m_own, w_own, y, i32(e), f32(ops.eps), i32(ops.flags)),
        0,
    )  # fmt: skip
    return y, S, z, log_scale


# --- CuPy: module loading and launching -------------------------------------------------------------


@cache
def _module(source: str, device_id: int) -> Any:
    """The cupy.RawModule of ``source`` with every instantiation, compiled once per device."""
    import cupy

    options = (*cuda_sources.COMPILE_OPTIONS, *(f"-I{p}" for p in cuda_sources.include_dirs()))
    with cupy.cuda.Device(device_id):
        return cupy.RawModule(
            code=cuda_sources.read_source(source),
            options=options,
            name_expressions=cuda_sources.name_expressions(source),
        )


class CupyLauncher:
    """``launch(name, grid, block, args, shared_bytes)`` on the current CuPy device and stream."""

    def __init__(self, device_id: int) -> None:
        import cupy

        self.device_id = device_id
        attributes = cupy.cuda.Device(device_id).attributes
        self.max_shared_bytes = int(attributes.get("MaxSharedMemoryPerBlockOptin", 48 * 1024))
        self.sm_count = int(attributes["MultiProcessorCount"])

    def __call__(
        self, name: str, grid: tuple[int, int], block: int, args: tuple[Any, ...], shared_bytes: int
    ) -> None:
        kernel_name = name.split("<", 1)[0]
        source = cuda_sources.source_of(kernel_name)
        kernel = _module(source, self.device_id).get_function(name)
        if shared_bytes > 48 * 1024 and kernel.max_dynamic_shared_size_bytes < shared_bytes:
            kernel.max_dynamic_shared_size_bytes = shared_bytes
        kernel(grid, (block,), args, shared_mem=shared_bytes)


_tables: dict[tuple[int, int, int], Any] = {}


def device_table(d: int, power: int, device_id: int) -> Any:
    """The feature index table as a CuPy array on ``device_id``, cached."""
    import cupy

    key = (device_id, d, power)
    if key not in _tables:
        with cupy.cuda.Device(device_id):
            _tables[key] = cupy.asarray(feature_index_table(d, power))
    return _tables[key]


# --- DLPack and the CUDA array interface: CuPy, PyTorch CUDA tensors, Numba device arrays ----------------


def library_of(x: Any) -> str:
    """ "cupy", "torch" or "numba" for an array of those libraries; else ValueError."""
    module = type(x).__module__.split(".")[0]
    if module in ("cupy", "torch", "numba"):
        return module
    raise ValueError(
        f"the CuPy kernels take CuPy, PyTorch CUDA or Numba device arrays, got {type(x).__name__}"
    )


def dtype_name(x: Any) -> str:
    return str(x.dtype).rsplit(".", 1)[-1]


def to_cupy(x: Any) -> Any:
    """A CuPy view (no copy) of a CuPy, PyTorch CUDA (by DLPack) or Numba device array (by the CUDA
    array interface); bfloat16 tensors come as int16 arrays of their bits."""
    import cupy

    library = library_of(x)
    if library == "cupy":
        return x
    if library == "torch":
        import torch

        if x.dtype == torch.bfloat16:
            x = x.view(torch.int16)
        return cupy.from_dlpack(x)
    return cupy.asarray(x)


def from_cupy(x: Any, library: str, dtype: str) -> Any:
    """``x`` as an array of ``library`` (no copy); int16 bits become bfloat16 where ``dtype`` says so."""
    if library == "cupy":
        return x
    if library == "torch":
        import torch

        tensor = torch.from_dlpack(x)
        return tensor.view(torch.bfloat16) if dtype == "bfloat16" else tensor
    from numba import cuda

    return cuda.as_cuda_array(x)
