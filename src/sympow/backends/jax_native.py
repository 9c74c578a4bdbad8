"""JAX backend: the three forms of math.md, ``jax.jit``-compiled, scans through ``lax.scan``.

The same function, state and numerics contract as the specification (``sympow.spec``); notation as in
``spec.steps``: y = sigma^{1/2} R(mu_t) x (rectified for relu), phi(y) = exp(lam) f with every block of f
of norm <= 1, g the log-gates, partial results (num, den, m) standing for N = exp(m) num, Z = exp(m) den.

- chunked(C): intra-chunk attention batched over chunks; then one ``lax.scan`` over chunks queries the
  state entering each chunk and adds the chunk's keys, the state held as the feature row blocks of
  ``spec.feature_blocks`` (its body is compiled once, so compile time does not grow with T for a
  fixed C).
- recurrent: a ``lax.scan`` over tokens carrying exp(M) SZ; token t's own term comes from its score.
- parallel: the masked T x T score matrix, in row blocks through ``lax.map``; the gate sum of a (query i,
  key j) pair is a reverse cumulative sum over exactly the gates l in (j, i], never a difference of long
  prefix sums.

Dtypes: scores in float32 (float64 for float64 inputs); the state path in float64 when x64 is enabled
and the inputs are float32 or float64 (see ``torch_native.state_dtype_for`` for why), else float32;
rotary angles through the spec's ``accumulate_angles`` (float64 under x64, else a compensated scan).
Everything is differentiable (``jax.grad``) and batches under ``jax.vmap``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache, partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ..spec import Request, State
from ..spec.feature_blocks import build, inverse_order, layout, scaled_units
from ..spec.features import feature_table
from ..spec.kernel import Kernel
from ..spec.rotary import accumulate_angles

DTYPES = ("float16", "bfloat16", "float32", "float64")
ROW_BLOCK_ELEMENTS = 1 << 22  # score entries per batch entry in one row block of the parallel form


def supports(request: Request) -> str | None:
    """None if this backend computes ``request``: every kernel, weight and form, on any JAX device."""
    if str(request.dtype) not in DTYPES:
        return f"dtype {request.dtype} is not one of {list(DTYPES)}"
    return None


@dataclass(frozen=True)
class Options:
    """The static (compile-time) part of a call."""

    kernel: Kernel
    scale: float
    rotary_layout: str
    normalize: bool
    eps: float
    form: str
    chunk_size: int
    return_state: bool


def run(request: Request, form: str) -> tuple[Any, State | None]:
    options = Options(
        request.kernel, request.scale, request.rotary_layout, request.normalize, request.eps, form,
        request.chunk_size, request.return_state,
    )  # fmt: skip
    return forward(
        request.q, request.k, request.v, request.log_gate, request.proportions, request.rotary,
        request.initial_state, options=options,
    )  # fmt: skip


@partial(jax.jit, static_argnames=("options",))
def forward(q, k, v, log_gate, proportions, rotary, initial_state, *, options: Options):
    """(y [..., T, e] in q's dtype, State or None); arguments as validated by ``attention``."""
    x = _prepare(q, k, v, log_gate, proportions, rotary, initial_state, options)
    if options.form == "parallel":
        y, final = _parallel(x, options.return_state)
    elif options.form == "recurrent":
        y, final = _recurrent(x)
    else:
        y, final = _chunked(x, min(options.chunk_size, x.T))
    state = _unpack(*final, x) if options.return_state else None
    return y.astype(q.dtype), state


# --- preparation -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Inputs:
    """As ``torch_native.Inputs``: yq, yk [..., T, d]; v [..., T, e]; g [..., T] or None; a, b [..., T]
    with weights qw, kw [..., T, 2], or None; initial SZ [..., D, H*(e+1)] with log scale [...]."""

    kernel: Kernel
    yq: Any
    yk: Any
    v: Any
    g: Any
    a: Any
    b: Any
    qw: Any
    kw: Any
    initial: Any
    initial_scale: Any
    resumed: bool
    mu_end: Any
    normalize: bool
    eps: float

    @property
    def T(self) -> int:
        return self.yq.shape[-2]

    @property
    def e(self) -> int:
        return self.v.shape[-1]

    @property
    def halves(self) -> int:
        return 1 if self.kw is None else 2

    @property
    def state_dtype(self) -> Any:
        return self.initial.dtype


def state_dtype_for(dtype: Any) -> Any:
    """float64 for float32/float64 inputs when x64 is enabled, else float32."""
    wide = jax.config.jax_enable_x64 and dtype in (jnp.float32, jnp.float64)
    return jnp.float64 if wide else jnp.float32


def _prepare(q, k, v, log_gate, proportions, rotary, state, options: Options) -> Inputs:
    kernel = options.kernel
    work = jnp.float64 if q.dtype == jnp.float64 else jnp.float32
    sd = state_dtype_for(q.dtype)
    T, d, e = q.shape[-2], q.shape[-1], v.shape[-1]
    leading = [q.shape[:-2], k.shape[:-2], v.shape[:-2]]
    leading += [x.shape[:-1] for x in (log_gate, *(proportions or ())) if x is not None]
    leading += [rotary.shape[:-2]] if rotary is not None else []
    if state is not None:
        leading += [state.S.shape[:-2], state.z.shape[:-1], jnp.shape(state.log_scale)]
        leading += [state.mu.shape[:-1]] if state.mu is not None else []
    batch = jnp.broadcast_shapes(*leading)

    def cast(x: Any, tail: tuple[int, ...]) -> Any:
        return jnp.broadcast_to(x.astype(work), (*batch, *tail))

    q, k, v = cast(q, (T, d)), cast(k, (T, d)), cast(v, (T, e))
    mu0 = None if state is None else state.mu
    mu_end = None
    if rotary is not None or mu0 is not None:
        increments = jnp.zeros((*batch, T, d // 2), work) if rotary is None else rotary
        mu, mu_end = accumulate_angles(increments, mu0, jnp)
        mu = jnp.broadcast_to(mu, (*batch, T, d // 2))
        mu_end = jnp.broadcast_to(mu_end, (*batch, d // 2))
        cos, sin = jnp.cos(mu).astype(work), jnp.sin(mu).astype(work)
        q, k = _rotate(q, cos, sin, options.rotary_layout), _rotate(k, cos, sin, options.rotary_layout)
    if kernel.rectify:
        q, k = jnp.maximum(q, 0.0), jnp.maximum(k, 0.0)
    root = math.sqrt(options.scale)
    g = None if log_gate is None else cast(log_gate, (T,))
    a = b = qw = kw = None
    if proportions is not None:
        a, b = (cast(x, (T,)) for x in proportions)
        qw, kw = (jnp.stack([jnp.cos(math.pi / 2 * x), jnp.sin(math.pi / 2 * x)], -1) for x in (a, b))
    halves = 1 if proportions is None else 2
    size = kernel.feature_size(d)
    if state is None:
        initial = jnp.zeros((*batch, size, halves * (e + 1)), sd)
        initial_scale = jnp.full(batch, -jnp.inf, sd)
    else:
        S = jnp.broadcast_to(state.S.astype(sd), (*batch, halves * size, e))
        z = jnp.broadcast_to(state.z.astype(sd), (*batch, halves * size))
        sz = jnp.concatenate([S.reshape(*batch, halves, size, e), z.reshape(*batch, halves, size, 1)], -1)
        initial = jnp.swapaxes(sz, -3, -2).reshape(*batch, size, halves * (e + 1))
        initial_scale = jnp.broadcast_to(jnp.asarray(state.log_scale).astype(sd), batch)
    return Inputs(
        kernel=kernel, yq=q * root, yk=k * root, v=v, g=g, a=a, b=b, qw=qw, kw=kw, initial=initial,
        initial_scale=initial_scale, resumed=state is not None, mu_end=mu_end,
        normalize=options.normalize, eps=options.eps,
    )  # fmt: skip


def _rotate(x: Any, cos: Any, sin: Any, layout: str) -> Any:
    half = x.shape[-1] // 2
    if layout == "half":
        x1, x2 = x[..., :half], x[..., half:]
        return jnp.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], -1)
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return jnp.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], -1).reshape(x.shape)


def _unpack(packed: Any, scale: Any, x: Inputs) -> State:
    """SZ [..., D, H*(e+1)] -> State(S [..., H*D, e], z [..., H*D]) in the spec's layout."""
    batch, size, e = packed.shape[:-2], packed.shape[-2], x.e
    sz = jnp.swapaxes(packed.reshape(*batch, size, x.halves, e + 1), -3, -2)
    sz = sz.reshape(*batch, x.halves * size, e + 1)
    return State(S=sz[..., :e], z=sz[..., e], mu=x.mu_end, log_scale=scale)


# --- features ----------------------------------------------------------------------------------------


@lru_cache(maxsize=32)
def _table(d: int, n: int) -> tuple[tuple[np.ndarray, ...], np.ndarray]:
    indices, coefficients = feature_table(d, n)
    columns = np.asarray(indices, dtype=np.int32).reshape(len(indices), n).T
    return tuple(np.ascontiguousarray(c) for c in columns), np.asarray(coefficients)


def _power_features(u: Any, n: int) -> Any:
    """phi_n(u) [..., C(d+n-1, n)] from the spec's index table."""
    if n == 0:
        return jnp.ones((*u.shape[:-1], 1), u.dtype)
    if n == 1:
        return u
    columns, coefficients = _table(u.shape[-1], n)
    product = jnp.take(u, columns[0], axis=-1) * coefficients.astype(u.dtype)
    for column in columns[1:]:
        product = product * jnp.take(u, column, axis=-1)
    return product


def _terms(kernel: Kernel) -> list[tuple[int, float]]:
    """(n, log c_n) of each degree (not the cached property, whose lock torch.compile cannot trace)."""
    return [(n, math.log(c)) for n, c in zip(kernel.degrees, kernel.coefficients, strict=True)]


def _safe_log(x: Any) -> Any:
    """log x for x >= 0, -inf at 0 with a zero (not NaN) gradient."""
    positive = x > 0
    return jnp.where(positive, jnp.log(jnp.where(positive, x, 1.0)), -jnp.inf)


def _finite_or_zero(m: Any) -> Any:
    return jnp.where(jnp.isfinite(m), m, 0.0)


def _log_scales(kernel: Kernel, y: Any) -> tuple[Any, list[Any], Any]:
    """(u = y / |y|, [x_n], lam) as ``spec.features.log_scales``."""
    peak = jnp.max(jnp.abs(y), axis=-1, keepdims=True)
    ratio = y / jnp.where(peak > 0, peak, 1.0)
    squares = jnp.sum(ratio * ratio, axis=-1, keepdims=True)
    nonzero = squares > 0
    safe = jnp.where(nonzero, squares, 1.0)
    unit = ratio * lax.rsqrt(safe)
    log_norm = jnp.where(nonzero, _safe_log(peak) + 0.5 * jnp.log(safe), -jnp.inf)[..., 0]
    finite = jnp.isfinite(log_norm)
    safe_norm = jnp.where(finite, log_norm, 0.0)
    exponents = []
    for n, log_c in _terms(kernel):
        if n == 0:
            exponents.append(jnp.full_like(safe_norm, 0.5 * log_c))
        else:
            exponents.append(jnp.where(finite, 0.5 * log_c + n * safe_norm, -jnp.inf))
    lam = exponents[0]
    for exponent in exponents[1:]:
        lam = jnp.maximum(lam, exponent)
    return unit, exponents, _finite_or_zero(lam)


def _scaled(kernel: Kernel, y: Any) -> tuple[Any, Any]:
    """(f [..., D], lam [...]) with phi(y) = exp(lam) f (see ``torch_native._scaled``)."""
    unit, exponents, lam = _log_scales(kernel, y)
    if len(exponents) == 1:
        return _power_features(unit, kernel.degrees[0]), lam
    blocks = [
        jnp.exp(exponent - lam)[..., None] * _power_features(unit, n)
        for n, exponent in zip(kernel.degrees, exponents, strict=True)
    ]
    return jnp.concatenate(blocks, -1), lam


# --- the steps ---------------------------------------------------------------------------------------


def _attend(kernel: Kernel, yq, yk, v, log_weight, proportion_weight):
    """(num [..., R, e], den [..., R], m [..., R]): kappa(s_ij) exp(log_weight_ij) w_ij v_j in log space,
    the row maximum m factored out."""
    scores = yq @ jnp.swapaxes(yk, -1, -2)
    log_abs = _safe_log(jnp.abs(scores))
    exponents = []
    for n, log_c in _terms(kernel):
        term = log_abs if n == 1 else n * log_abs
        if n == 0 or log_c:
            term = jnp.full_like(log_abs, log_c) if n == 0 else term + log_c
        exponents.append(log_weight + term)
    m = jnp.max(exponents[0], axis=-1)
    for exponent in exponents[1:]:
        m = jnp.maximum(m, jnp.max(exponent, axis=-1))
    reference = _finite_or_zero(m)[..., None]
    weights = None
    for n, exponent in zip(kernel.degrees, exponents, strict=True):
        term = jnp.exp(exponent - reference)
        if n % 2 == 1:
            term = jnp.where(scores < 0, -term, term)
        weights = term if weights is None else weights + term
    if proportion_weight is not None:
        weights = weights * proportion_weight
    return weights @ v, jnp.sum(weights, -1), m


def _values(v: Any, kw: Any) -> Any:
    values = jnp.concatenate([v, jnp.ones_like(v[..., :1])], -1)
    if kw is None:
        return values
    return jnp.concatenate([values * kw[..., h : h + 1] for h in range(kw.shape[-1])], -1)


def _chunk_states(f, lam, to_end, values):
    """(SZ [..., D, W], m [...]) = sum_j exp(lam_j + to_end_j - m) f_j values_j^T."""
    log_weight = lam + to_end
    m = jnp.max(log_weight, axis=-1)
    scale = jnp.exp(log_weight - _finite_or_zero(m)[..., None])
    return jnp.swapaxes(f, -1, -2) @ (values * scale[..., None]), m


def _query(f, lam, from_start, states, state_scale, qw, e: int):
    product = f @ states
    if qw is not None:
        product = jnp.sum(product.reshape(*product.shape[:-1], qw.shape[-1], e + 1) * qw[..., None], -2)
    return product[..., :e], product[..., e], lam + from_start + state_scale[..., None]


def _merge(first, second):
    num1, den1, m1 = first
    num2, den2, m2 = second
    m = jnp.maximum(m1, m2)
    reference = _finite_or_zero(m)
    w1, w2 = jnp.exp(m1 - reference), jnp.exp(m2 - reference)
    return w1[..., None] * num1 + w2[..., None] * num2, w1 * den1 + w2 * den2, m


def _finish(partial, normalize: bool, eps: float):
    num, den, m = partial
    reference = _finite_or_zero(m)
    if normalize:
        if eps > 0:
            den = den + eps * jnp.exp(-reference)
        positive = den > 0
        return jnp.where(positive[..., None], num / jnp.where(positive, den, 1.0)[..., None], 0.0)
    return jnp.where(num == 0, num, num * jnp.exp(reference)[..., None])


def _back(partial, dtype):
    return tuple(t.astype(dtype) for t in partial)


def _to(x: Any, dtype: Any) -> Any:
    return None if x is None else x.astype(dtype)


def _segment_sums(g: Any) -> Any:
    """G [..., C, C]: sum_{l=j+1..i} g_l for j <= i (a masked cumsum), -inf above the diagonal."""
    idx = jnp.arange(g.shape[-1])
    below = idx[:, None] > idx[None, :]
    sums = jnp.cumsum(jnp.where(below, g[..., :, None], 0.0), axis=-2)
    return jnp.where(idx[:, None] >= idx[None, :], sums, -jnp.inf)


def _suffix_sums(g: Any) -> Any:
    """sum_{l>j} g_l along the last axis (exclusive)."""
    shifted = jnp.concatenate([g[..., 1:], jnp.zeros_like(g[..., :1])], -1)
    return jnp.flip(jnp.cumsum(jnp.flip(shifted, -1), -1), -1)


def _gates(x: Inputs) -> Any:
    return x.g if x.g is not None else jnp.zeros(x.yq.shape[:-1], x.yq.dtype)


def _scan_step(carry, chunk):
    """S <- exp(decay) S + S_chunk, kept as exp(M) SZ with M <- max(M + decay, m_chunk)."""
    current, current_scale = carry
    state, scale, decay = chunk
    decayed = current_scale + decay
    new_scale = jnp.maximum(decayed, scale)
    reference = _finite_or_zero(new_scale)
    new = (
        jnp.exp(decayed - reference)[..., None, None] * current
        + jnp.exp(scale - reference)[..., None, None] * state
    )
    return (new, new_scale), (current, current_scale)


# --- the three forms ---------------------------------------------------------------------------------


def _chunk(x: Any, n: int, size: int, tail: int) -> Any:
    """[..., T, *rest] -> [..., n, size, *rest], zero-padding T to n * size."""
    axis = x.ndim - 1 - tail
    T = x.shape[axis]
    if n * size > T:
        x = jnp.pad(x, [(0, 0)] * axis + [(0, n * size - T)] + [(0, 0)] * tail)
    return x.reshape(*x.shape[:axis], n, size, *x.shape[axis + 1 :])


def _chunked(x: Inputs, size: int):
    T, e, kernel, sd = x.T, x.e, x.kernel, x.state_dtype
    n = -(-T // size)
    yq, yk, v = (_chunk(t, n, size, 1) for t in (x.yq, x.yk, x.v))
    # 1. intra-chunk attention
    idx = jnp.arange(size)
    if x.g is None:
        log_weight = jnp.where(idx[:, None] >= idx[None, :], 0.0, -jnp.inf).astype(yq.dtype)
        g = jnp.zeros(yq.shape[:-1], sd)
    else:
        g = _chunk(x.g, n, size, 0)
        log_weight = _segment_sums(g)
        g = g.astype(sd)
    weight = None
    if x.a is not None:
        a, b = _chunk(x.a, n, size, 0), _chunk(x.b, n, size, 0)
        weight = jnp.cos(math.pi / 2 * (a[..., :, None] - b[..., None, :]))
    intra = _attend(kernel, yq, yk, v, log_weight, weight)
    # 2-4. the state path, chunk by chunk through lax.scan (as ``spec.forms.chunked``)
    inter, final, final_scale = _chunk_by_chunk(x, n, size, g, yq, yk, v)
    y = _finish(_merge(intra, _back(inter, yq.dtype)), x.normalize, x.eps)
    y = y.reshape(*y.shape[:-3], n * size, e)[..., :T, :]
    return y, (final, final_scale)


def _chunk_by_chunk(x: Inputs, n: int, size: int, g, yq, yk, v):
    """Steps 2-4 fused in one ``lax.scan`` over chunks, the state held as feature row blocks: the jax
    form of ``spec.forms._chunk_by_chunk`` (see there). yq, yk [..., n, C, d], v [..., n, C, e], g
    [..., n, C] (zeros without gates). Returns the inter-chunk partial (num, den, m) and the final (SZ in
    table order, log scale)."""
    kernel, e, sd = x.kernel, x.e, x.state_dtype
    d, degrees = yq.shape[-1], tuple(kernel.degrees)
    blocks = layout(d, degrees)
    q_units, q_constant, q_lam = scaled_units(kernel, yq.astype(sd), jnp, _log_scales)
    k_units, k_constant, k_lam = scaled_units(kernel, yk.astype(sd), jnp, _log_scales)
    valid = (jnp.arange(n * size) < x.T).reshape(n, size)
    k_log = k_lam + jnp.where(valid, _suffix_sums(g), -jnp.inf)
    chunk_max = jnp.max(k_log, -1)
    kw = None if x.kw is None else _chunk(x.kw, n, size, 1)
    values = (
        _values(v.astype(sd), _to(kw, sd)) * jnp.exp(k_log - _finite_or_zero(chunk_max)[..., None])[..., None]
    )
    qw = None if x.qw is None else _chunk(x.qw, n, size, 1).astype(sd)

    def first(t: Any, axis: int) -> Any:  # the chunk axis first, for lax.scan
        return None if t is None else jnp.moveaxis(t, axis, 0)

    def feature_major(units: dict[int, Any]) -> dict[int, Any]:  # [n, ..., d, C]
        return {degree: first(jnp.swapaxes(u, -1, -2), -3) for degree, u in units.items()}

    chunks = (
        feature_major(q_units), first(None if q_constant is None else q_constant[..., None, :], -3),
        feature_major(k_units), first(None if k_constant is None else k_constant[..., None, :], -3),
        first(values, -3), first(chunk_max, -1), first(jnp.sum(g, -1), -1), first(qw, -3),
    )  # fmt: skip

    def step(carry, chunk):
        state, scale = carry
        q_u, q_c, k_u, k_c, weighted, top, total, weight = chunk
        product = None
        for f, s in zip(build(blocks, q_u, q_c, jnp), state, strict=True):
            term = jnp.swapaxes(f, -1, -2) @ s
            product = term if product is None else product + term
        if weight is not None:
            product = jnp.sum(product.reshape(*product.shape[:-1], 2, e + 1) * weight[..., None], -2)
        decayed = scale + total
        new_scale = jnp.maximum(decayed, top)
        reference = _finite_or_zero(new_scale)
        weighted = weighted * jnp.exp(top - reference)[..., None, None]
        keep = jnp.exp(decayed - reference)[..., None, None]
        k_features = build(blocks, k_u, k_c, jnp)
        new_state = tuple(keep * s + f @ weighted for f, s in zip(k_features, state, strict=True))
        return (new_state, new_scale), (product[..., :e], product[..., e], scale)

    initial = [jnp.take(x.initial, np.asarray(block.rows), axis=-2) for block in blocks]
    (state, scale), (nums, dens, entering) = lax.scan(step, (tuple(initial), x.initial_scale), chunks)
    m = q_lam + jnp.cumsum(g, -1) + jnp.moveaxis(entering, 0, -1)[..., None]
    inter = (jnp.moveaxis(nums, 0, -3), jnp.moveaxis(dens, 0, -2), m)
    final = jnp.take(jnp.concatenate(state, -2), np.asarray(inverse_order(d, degrees)), axis=-2)
    return inter, final, scale


def _parallel(x: Inputs, return_state: bool):
    T, e, kernel, sd = x.T, x.e, x.kernel, x.state_dtype
    g = _gates(x)
    rows = max(1, min(T, ROW_BLOCK_ELEMENTS // T))
    blocks = -(-T // rows)
    keys = jnp.arange(T)
    if x.resumed:
        fq, lq = _scaled(kernel, x.yq.astype(sd))
        from_start = jnp.cumsum(g.astype(sd), -1)

    def rows_of(t: Any, start: Any, tail: int) -> Any:
        axis = t.ndim - 1 - tail
        padded = jnp.pad(t, [(0, 0)] * axis + [(0, blocks * rows - T)] + [(0, 0)] * tail)
        return lax.dynamic_slice_in_dim(padded, start, rows, axis=axis)

    def block(start: Any) -> Any:
        query = start + jnp.arange(rows)
        causal = keys[None, :] <= query[:, None]  # [rows, T]
        if x.g is None:
            log_weight = jnp.where(causal, 0.0, -jnp.inf).astype(g.dtype)
        else:  # sum over exactly l in (j, i]: a reverse cumsum of the gates masked to l <= i
            laid = jnp.where(keys[None, :] <= query[:, None], g[..., None, :], 0.0)
            shifted = jnp.concatenate([laid[..., 1:], jnp.zeros_like(laid[..., :1])], -1)
            sums = jnp.flip(jnp.cumsum(jnp.flip(shifted, -1), -1), -1)
            log_weight = jnp.where(causal, sums, -jnp.inf)
        weight = None
        if x.a is not None:
            weight = jnp.cos(math.pi / 2 * (rows_of(x.a, start, 0)[..., :, None] - x.b[..., None, :]))
        partial = _attend(kernel, rows_of(x.yq, start, 1), x.yk, x.v, log_weight, weight)
        if x.resumed:
            qw = None if x.qw is None else rows_of(x.qw, start, 1).astype(sd)
            from_state = _query(
                rows_of(fq, start, 1), rows_of(lq, start, 0), rows_of(from_start, start, 0), x.initial,
                x.initial_scale, qw, e,
            )  # fmt: skip
            partial = _merge(partial, _back(from_state, g.dtype))
        return _finish(partial, x.normalize, x.eps)

    if blocks == 1:
        y = block(0)[..., :T, :]
    else:
        ys = lax.map(block, jnp.arange(blocks) * rows)  # [blocks, ..., rows, e]
        y = jnp.moveaxis(ys, 0, -3).reshape(*ys.shape[1:-2], blocks * rows, e)[..., :T, :]
    if not return_state:
        return y, None
    fk, lk = _scaled(kernel, x.yk.astype(sd))
    g = g.astype(sd)
    states, scales = _chunk_states(fk, lk, _suffix_sums(g), _values(x.v.astype(sd), _to(x.kw, sd)))
    final, _ = _scan_step((x.initial, x.initial_scale), (states, scales, jnp.sum(g, -1)))
    return y, final


def _recurrent(x: Inputs):
    """Token by token through ``lax.scan``: y_t from the state after t-1 (decayed by g_t) merged with
    token t's own term from its score; then S <- gamma_t S + phi(k~_t) v_t^T."""
    kernel, e, sd = x.kernel, x.e, x.state_dtype
    g = _gates(x).astype(sd)
    fq, lq = _scaled(kernel, x.yq.astype(sd))
    fk, lk = _scaled(kernel, x.yk.astype(sd))
    values = _values(x.v.astype(sd), _to(x.kw, sd))
    own_weight = None if x.a is None else jnp.cos(math.pi / 2 * (x.a - x.b))[..., None, None]
    own = _attend(
        kernel, x.yq[..., None, :], x.yk[..., None, :], x.v[..., None, :], jnp.zeros((), x.yq.dtype),
        own_weight,
    )  # fmt: skip
    own = (own[0][..., 0, :], own[1][..., 0], own[2][..., 0])

    def step(carry, token):
        state, scale = carry
        fq_t, fk_t, lk_t, values_t, g_t = token
        product = (fq_t[..., None, :] @ state)[..., 0, :]
        decayed = scale + g_t
        new_scale = jnp.maximum(decayed, lk_t)
        reference = _finite_or_zero(new_scale)
        update = fk_t[..., :, None] * values_t[..., None, :]
        new = (
            jnp.exp(decayed - reference)[..., None, None] * state
            + jnp.exp(lk_t - reference)[..., None, None] * update
        )
        return (new, new_scale), (product, scale)

    tokens = (
        jnp.moveaxis(fq, -2, 0), jnp.moveaxis(fk, -2, 0), jnp.moveaxis(lk, -1, 0),
        jnp.moveaxis(values, -2, 0), jnp.moveaxis(g, -1, 0),
    )  # fmt: skip
    final, (products, scales) = lax.scan(step, (x.initial, x.initial_scale), tokens)
    product, scales = jnp.moveaxis(products, 0, -2), jnp.moveaxis(scales, 0, -1)
    if x.qw is not None:
        product = jnp.sum(product.reshape(*product.shape[:-1], 2, e + 1) * x.qw.astype(sd)[..., None], -2)
    past = (product[..., :e], product[..., e], lq + g + scales)
    y = _finish(_merge(own, _back(past, x.yq.dtype)), x.normalize, x.eps)
    return y, final
