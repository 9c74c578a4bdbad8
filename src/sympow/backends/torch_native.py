"""PyTorch backend: the three forms of math.md in native torch operations, on CPU and CUDA.

The same function, state and numerics contract as the specification (``sympow.spec``), written with
torch operations for speed: batched matmuls for the intra-chunk attention; the chunked form's state path
chunk by chunk with the features of one chunk at a time, built in row blocks (``spec.feature_blocks``);
``torch.cumsum`` for the angles and the in-chunk gate sums. Notation as in ``spec.steps``:
y = sigma^{1/2} R(mu_t) x (rectified for relu), phi(y) = exp(lam) f with every block of f of norm <= 1,
g the log-gates, and partial results (num, den, m) standing for N = exp(m) num, Z = exp(m) den.

Numerics (math.md section 7): scores are computed in float32 for float16, bfloat16 and float32 inputs
(float64 for float64); the state path (features, S, z) in ``state_dtype_for`` the input dtype, kept as
exp(M) SZ with a log scale M per batch entry; gate sums are segment sums inside a chunk (never a
difference of long prefix sums, never the exp of a positive number); rotary angles are accumulated in
float64; eps acts on the true denominator; an all-zero row gives 0, not NaN. Every operation is
differentiable (autograd) and the chunked form compiles with ``torch.compile(fullgraph=True)``: after
validation, ``forward`` is tensor code only, with one Python loop over chunks and none over tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from ..spec import Request, State
from ..spec.feature_blocks import (
    block_height,
    block_shapes,
    inverse_order,
    pairs_in_block,
    row_order,
    scaled_units,
)
from ..spec.features import feature_table
from ..spec.kernel import Kernel
from ..spec.rotary import TWO_PI

DEVICES = ("cpu", "cuda")
DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
ROW_BLOCK_ELEMENTS = 1 << 22  # score entries per batch entry in one row block of the parallel form


def supports(request: Request) -> str | None:
    """None if this backend computes ``request``: every kernel, weight and form, on CPU or CUDA."""
    if request.q.device.type not in DEVICES:
        return f"device {request.q.device.type!r} is not one of {list(DEVICES)}"
    if request.dtype not in DTYPES:
        return f"dtype {request.dtype} is not one of {[str(t) for t in DTYPES]}"
    return None


def run(request: Request, form: str) -> tuple[Any, State | None]:
    return forward(
        request.q, request.k, request.v, log_gate=request.log_gate, proportions=request.proportions,
        rotary=request.rotary, initial_state=request.initial_state, kernel=request.kernel,
        scale=request.scale, rotary_layout=request.rotary_layout, normalize=request.normalize,
        eps=request.eps, form=form, chunk_size=request.chunk_size, return_state=request.return_state,
    )  # fmt: skip


@dataclass(frozen=True)
class Inputs:
    """Broadcast inputs in the compute dtype: yq, yk [..., T, d]; v [..., T, e]; g [..., T] or None;
    a, b [..., T] and their (cos, sin)(pi x / 2) weights qw, kw [..., T, 2], or None; the initial state
    SZ [..., D, H*(e+1)] with log scale M [...] (-inf when empty); mu_end [..., d/2] or None."""

    kernel: Kernel
    yq: torch.Tensor
    yk: torch.Tensor
    v: torch.Tensor
    g: torch.Tensor | None
    a: torch.Tensor | None
    b: torch.Tensor | None
    qw: torch.Tensor | None
    kw: torch.Tensor | None
    initial: torch.Tensor
    initial_scale: torch.Tensor
    resumed: bool
    mu_end: torch.Tensor | None
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


def forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    log_gate: torch.Tensor | None = None,
    proportions: tuple[torch.Tensor, torch.Tensor] | None = None,
    rotary: torch.Tensor | None = None,
    initial_state: State | None = None,
    kernel: Kernel,
    scale: float,
    rotary_layout: str = "half",
    normalize: bool = True,
    eps: float = 0.0,
    form: str = "chunked",
    chunk_size: int = 64,
    return_state: bool = False,
) -> tuple[torch.Tensor, State | None]:
    """(y [..., T, e] in q's dtype, State or None) for already validated tensors (see ``attention``)."""
    x = _prepare(
        q, k, v, log_gate, proportions, rotary, initial_state, kernel, scale, rotary_layout,
        normalize, eps,
    )  # fmt: skip
    if form == "parallel":
        y, final = _parallel(x, return_state)
    elif form == "recurrent":
        y, final = _recurrent(x, return_state)
    else:
        y, final = _chunked(x, min(chunk_size, x.T), return_state)
    return y.to(q.dtype), None if final is None else _unpack(*final, x)


# --- preparation -------------------------------------------------------------------------------------


def _prepare(q, k, v, log_gate, proportions, rotary, state, kernel, scale, layout, normalize, eps):
    work = torch.float64 if q.dtype == torch.float64 else torch.float32
    state_dtype = state_dtype_for(q.dtype)
    T, d, e = q.shape[-2], q.shape[-1], v.shape[-1]
    leading = [q.shape[:-2], k.shape[:-2], v.shape[:-2]]
    leading += [x.shape[:-1] for x in (log_gate, *(proportions or ())) if x is not None]
    leading += [rotary.shape[:-2]] if rotary is not None else []
    if state is not None:
        leading += [state.S.shape[:-2], state.z.shape[:-1], state.log_scale.shape]
        leading += [state.mu.shape[:-1]] if state.mu is not None else []
    batch = torch.broadcast_shapes(*leading)

    def cast(x: torch.Tensor, tail: tuple[int, ...]) -> torch.Tensor:
        return x.to(work).expand(*batch, *tail)

    q, k, v = cast(q, (T, d)), cast(k, (T, d)), cast(v, (T, e))
    mu0 = None if state is None else state.mu
    mu_end = None
    if rotary is not None or mu0 is not None:
        if rotary is None:
            mu = torch.zeros((*batch, T, d // 2), dtype=torch.float64, device=q.device)
        else:
            mu = torch.cumsum(rotary.to(torch.float64), dim=-2)
        if mu0 is not None:
            mu = mu + mu0.to(torch.float64)[..., None, :]
        mu = mu.expand(*batch, T, d // 2)
        last = mu[..., -1, :]
        mu_end = last - TWO_PI * torch.round(last / TWO_PI)
        cos, sin = torch.cos(mu).to(work), torch.sin(mu).to(work)
        q, k = _rotate(q, cos, sin, layout), _rotate(k, cos, sin, layout)
    if kernel.rectify:
        q, k = torch.relu(q), torch.relu(k)
    root = math.sqrt(scale)
    g = None if log_gate is None else cast(log_gate, (T,))
    a = b = qw = kw = None
    if proportions is not None:
        a, b = (cast(x, (T,)) for x in proportions)
        qw, kw = (torch.stack([torch.cos(math.pi / 2 * x), torch.sin(math.pi / 2 * x)], -1) for x in (a, b))
    halves = 1 if proportions is None else 2
    size = kernel.feature_size(d)
    if state is None:
        initial = torch.zeros((*batch, size, halves * (e + 1)), dtype=state_dtype, device=q.device)
        initial_scale = torch.full(batch, -math.inf, dtype=state_dtype, device=q.device)
    else:
        S = state.S.to(state_dtype).expand(*batch, halves * size, e).reshape(*batch, halves, size, e)
        z = state.z.to(state_dtype).expand(*batch, halves * size).reshape(*batch, halves, size, 1)
        sz = torch.cat([S, z], dim=-1).transpose(-3, -2)  # [..., D, H, e+1]
        initial = sz.reshape(*batch, size, halves * (e + 1))
        initial_scale = state.log_scale.to(state_dtype).expand(batch)
    return Inputs(
        kernel=kernel, yq=q * root, yk=k * root, v=v, g=g, a=a, b=b, qw=qw, kw=kw, initial=initial,
        initial_scale=initial_scale, resumed=state is not None, mu_end=mu_end, normalize=normalize,
        eps=eps,
    )  # fmt: skip


def state_dtype_for(dtype: torch.dtype) -> torch.dtype:
    """The dtype of the state path (features, S, z): float64 for float32 and float64 inputs, float32 for
    float16 and bfloat16.

    phi(q~).S sums terms of both signs whose total, (u_q . u_k)^p, can be far smaller than they are: in
    float32 a query nearly orthogonal to the keys loses it (measured: 3.7e-4 of max |v| at p = 4, T = 2,
    d = 8, beyond the float32 tolerance of 1e-4), as the spec found; float64 keeps it. The half-precision
    tolerance (2e-2) allows a float32 state.
    """
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else torch.float64


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, layout: str) -> torch.Tensor:
    """R(mu) x: pairs (x_m, x_{m+d/2}) ("half") or (x_{2m}, x_{2m+1}) ("interleaved")."""
    half = x.shape[-1] // 2
    if layout == "half":
        x1, x2 = x[..., :half], x[..., half:]
        return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2)


def _unpack(packed: torch.Tensor, scale: torch.Tensor, x: Inputs) -> State:
    """SZ [..., D, H*(e+1)] -> State(S [..., H*D, e], z [..., H*D]) in the spec's layout."""
    size, e = packed.shape[-2], x.e
    sz = packed.reshape(*packed.shape[:-2], size, x.halves, e + 1).transpose(-3, -2)
    sz = sz.reshape(*packed.shape[:-2], x.halves * size, e + 1)
    return State(S=sz[..., :e], z=sz[..., e], mu=x.mu_end, log_scale=scale)


# --- features ----------------------------------------------------------------------------------------

_tables: dict[tuple[Any, ...], torch.Tensor] = {}


@torch.compiler.assume_constant_result  # torch.compile runs it once and keeps the tensor as a constant
def _coefficients(d: int, high: tuple[int, ...], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """sqrt(n!/prod a_m!) of the spec's ``feature_table`` for every degree n in ``high`` (a kernel's
    degrees >= 2), concatenated, cached per device and dtype. One call serves all of a kernel's degrees,
    since a compiled graph keeps one argument set per constant function."""
    key = (d, high, str(device), dtype)
    if key not in _tables:
        rows = [c for n in high for c in feature_table(d, n)[1]]
        _tables[key] = torch.tensor(rows, dtype=dtype, device=device)
    return _tables[key]


def _high_degrees(degrees: tuple[int, ...]) -> tuple[int, ...]:
    """A kernel's distinct degrees >= 2, ascending: those whose features take coefficients."""
    return tuple(sorted({n for n in degrees if n >= 2}))


def _power_features(u: torch.Tensor, n: int, high: tuple[int, ...]) -> torch.Tensor:
    """phi_n(u) [..., C(d+n-1, n)] in the order of the spec's ``feature_table`` (sorted multisets in
    lexicographic order), times the coefficients sqrt(n!/prod a_m!); ``high`` lists the kernel's degrees
    >= 2 (``_high_degrees``) and must hold n when n >= 2.

    The monomials of degree n are built from those of degree n - 1 without a gather: in lexicographic
    order the multisets whose smallest index is i are i followed by the (n-1)-multisets of {i..d-1},
    and those are the tail of the (n-1)-multisets of {0..d-1}, from position C(d+n-2, n-1) -
    C(d-i+n-2, n-1). So M_n = concat_i u_i M_{n-1}[start_i:], each a contiguous product, built
    feature-major [D, ...] and returned as a view [..., D] that matmuls take without a copy.
    """
    if n == 0:
        return torch.ones((*u.shape[:-1], 1), dtype=u.dtype, device=u.device)
    if n == 1:
        return u
    d = u.shape[-1]
    rows = u.movedim(-1, 0).contiguous()  # [d, ...]
    monomials = rows
    for degree in range(2, n + 1):
        total = math.comb(d + degree - 2, degree - 1)
        blocks = [
            rows[i : i + 1] * monomials[total - math.comb(d - i + degree - 2, degree - 1) :] for i in range(d)
        ]
        monomials = torch.cat(blocks, dim=0)
    start = sum(math.comb(d + m - 1, m) for m in high[: high.index(n)])
    coefficients = _coefficients(d, high, u.device, u.dtype)[start : start + monomials.shape[0]]
    return (monomials * coefficients.reshape(-1, *[1] * (u.ndim - 1))).movedim(0, -1)


def _terms(kernel: Kernel) -> list[tuple[int, float]]:
    """(n, log c_n) of each degree (not the cached property, whose lock torch.compile cannot trace)."""
    return [(n, math.log(c)) for n, c in zip(kernel.degrees, kernel.coefficients, strict=True)]


def _safe_log(x: torch.Tensor) -> torch.Tensor:
    """log x for x >= 0 with log 0 = -inf, and a zero (not NaN) gradient there."""
    positive = x > 0
    return torch.where(positive, torch.log(torch.where(positive, x, 1.0)), -math.inf)


def _finite_or_zero(m: torch.Tensor) -> torch.Tensor:
    return torch.where(torch.isfinite(m), m, 0.0)


def _log_scales(kernel: Kernel, y: torch.Tensor):
    """(u = y / |y|, [x_n], lam): each degree's log scale x_n = log c_n / 2 + n log|y| (-inf for n > 0
    where y = 0) and lam = max_n x_n (0 where all are -inf), as ``spec.features.log_scales``."""
    peak = y.abs().amax(-1, keepdim=True)
    ratio = y / torch.where(peak > 0, peak, 1.0)
    squares = (ratio * ratio).sum(-1, keepdim=True)
    nonzero = squares > 0
    safe = torch.where(nonzero, squares, 1.0)
    unit = ratio * torch.rsqrt(safe)
    log_norm = torch.where(nonzero, _safe_log(peak) + 0.5 * torch.log(safe), -math.inf)[..., 0]
    finite = torch.isfinite(log_norm)
    safe_norm = torch.where(finite, log_norm, 0.0)
    exponents = []
    for n, log_c in _terms(kernel):
        if n == 0:
            exponents.append(torch.full_like(safe_norm, 0.5 * log_c))
        else:
            exponents.append(torch.where(finite, 0.5 * log_c + n * safe_norm, -math.inf))
    lam = exponents[0]
    for exponent in exponents[1:]:
        lam = torch.maximum(lam, exponent)
    return unit, exponents, _finite_or_zero(lam)


def _scaled(kernel: Kernel, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(f [..., D], lam [...]) with phi(y) = exp(lam) f and every block of f of norm <= 1.

    With u = y / |y| and L = log |y|: phi(y) = concat_n sqrt(c_n) |y|^n phi_n(u), lam = max_n (log c_n / 2
    + n L); where phi(y) = 0 (y = 0 and no degree 0), f = 0 and lam = 0.
    """
    unit, exponents, lam = _log_scales(kernel, y)
    high = _high_degrees(tuple(kernel.degrees))
    if len(exponents) == 1:  # one degree: f = phi_n(u) (zero where y = 0), lam = its exponent
        return _power_features(unit, kernel.degrees[0], high), lam
    blocks = [
        torch.exp(exponent - lam)[..., None] * _power_features(unit, n, high)
        for n, exponent in zip(kernel.degrees, exponents, strict=True)
    ]
    return torch.cat(blocks, dim=-1), lam


# --- the four steps ----------------------------------------------------------------------------------

Partial = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def _attend(kernel: Kernel, yq, yk, v, log_weight, proportion_weight) -> Partial:
    """(num [..., R, e], den [..., R], m [..., R]) of queries on keys: kappa(s_ij) exp(log_weight_ij)
    w_ij v_j, each term exp(log c_n + n log|s| + G) with the row maximum m factored out."""
    scores = yq @ yk.transpose(-1, -2)
    log_abs = _safe_log(scores.abs())
    exponents = []
    for n, log_c in _terms(kernel):
        term = log_abs if n == 1 else n * log_abs
        if n == 0 or log_c:
            term = torch.full_like(log_abs, log_c) if n == 0 else term + log_c
        exponents.append(log_weight + term)
    m = exponents[0].amax(-1)
    for exponent in exponents[1:]:
        m = torch.maximum(m, exponent.amax(-1))
    reference = _finite_or_zero(m)[..., None]
    weights = None
    negative = scores < 0
    for n, exponent in zip(kernel.degrees, exponents, strict=True):
        term = torch.exp(exponent - reference)
        if n % 2 == 1:
            term = torch.where(negative, -term, term)
        weights = term if weights is None else weights + term
    if proportion_weight is not None:
        weights = weights * proportion_weight
    return weights @ v, weights.sum(-1), m


def _values(v: torch.Tensor, kw: torch.Tensor | None) -> torch.Tensor:
    """(v | 1) [..., e+1], or for each half h (w_h v | w_h) concatenated [..., H*(e+1)]."""
    values = torch.cat([v, torch.ones_like(v[..., :1])], dim=-1)
    if kw is None:
        return values
    return torch.cat([values * kw[..., h : h + 1] for h in range(kw.shape[-1])], dim=-1)


def _chunk_states(f, lam, to_end, values) -> tuple[torch.Tensor, torch.Tensor]:
    """(SZ [..., D, W], m [...]) = sum_j exp(lam_j + to_end_j - m) f_j values_j^T over the key axis."""
    log_weight = lam + to_end
    m = log_weight.amax(-1)
    scale = torch.exp(log_weight - _finite_or_zero(m)[..., None])
    return f.transpose(-1, -2) @ (values * scale[..., None]), m


def _query(f, lam, from_start, states, state_scale, qw, e: int) -> Partial:
    """Queries f [..., C, D] against states [..., D, W] of log scale state_scale [...]."""
    product = f @ states
    if qw is not None:
        product = product.reshape(*product.shape[:-1], qw.shape[-1], e + 1)
        product = (product * qw[..., None]).sum(-2)
    return product[..., :e], product[..., e], lam + from_start + state_scale[..., None]


def _merge(first: Partial, second: Partial) -> Partial:
    num1, den1, m1 = first
    num2, den2, m2 = second
    m = torch.maximum(m1, m2)
    reference = _finite_or_zero(m)
    w1, w2 = torch.exp(m1 - reference), torch.exp(m2 - reference)
    return w1[..., None] * num1 + w2[..., None] * num2, w1 * den1 + w2 * den2, m


def _finish(partial: Partial, normalize: bool, eps: float) -> torch.Tensor:
    """y = N / (Z + eps), 0 where that is 0; or y = N."""
    num, den, m = partial
    reference = _finite_or_zero(m)
    if normalize:
        if eps > 0:
            den = den + eps * torch.exp(-reference)
        positive = den > 0
        return torch.where(positive[..., None], num / torch.where(positive, den, 1.0)[..., None], 0.0)
    return torch.where(num == 0, num, num * torch.exp(reference)[..., None])


def _segment_sums(g: torch.Tensor) -> torch.Tensor:
    """G [..., C, C]: sum_{l=j+1..i} g_l for j <= i, -inf above the diagonal (a masked cumsum)."""
    size = g.shape[-1]
    idx = torch.arange(size, device=g.device)
    below = idx[:, None] > idx[None, :]
    laid = torch.where(below, g[..., :, None], 0.0)
    return torch.where(below | (idx[:, None] == idx[None, :]), torch.cumsum(laid, dim=-2), -math.inf)


def _causal(size: int, like: torch.Tensor) -> torch.Tensor:
    return _causal_block(0, size, like)


def _causal_block(r0: int, r1: int, like: torch.Tensor) -> torch.Tensor:
    """[r1 - r0, r1]: 0 where key j <= query i (rows r0..r1-1), -inf elsewhere."""
    rows = torch.arange(r0, r1, device=like.device)[:, None]
    cols = torch.arange(r1, device=like.device)[None, :]
    return torch.where(cols <= rows, 0.0, -math.inf).to(like.dtype)


def _block_log_weight(g: torch.Tensor, r0: int, r1: int) -> torch.Tensor:
    """[..., r1 - r0, r1]: G_ij for queries r0..r1-1 and keys 0..r1-1; for keys before the block,
    sum_{l=r0..i} g_l + sum_{l=j+1..r0-1} g_l, each summed directly."""
    inside = _segment_sums(g[..., r0:r1])
    if r0 == 0:
        return inside
    earlier = torch.cumsum(g[..., r0:r1], -1)[..., :, None] + _suffix_sums(g[..., :r0])[..., None, :]
    return torch.cat([earlier, inside], dim=-1)


def _suffix_sums(g: torch.Tensor) -> torch.Tensor:
    """sum_{l>j} g_l along the last axis (exclusive)."""
    shifted = torch.cat([g[..., 1:], torch.zeros_like(g[..., :1])], dim=-1)
    return torch.flip(torch.cumsum(torch.flip(shifted, [-1]), dim=-1), [-1])


def _to(x: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    return None if x is None else x.to(dtype)


def _back(partial: Partial, dtype: torch.dtype) -> Partial:
    """A partial result of the state path in the dtype of the scores."""
    return tuple(t.to(dtype) for t in partial)


def _gates(x: Inputs) -> torch.Tensor:
    return x.g if x.g is not None else torch.zeros(x.yq.shape[:-1], dtype=x.yq.dtype, device=x.yq.device)


def _scan(states, scales, decays, current, current_scale):
    """States entering each chunk [..., n, D, W] and their scales [..., n], then the final (SZ, M):
    S <- exp(decay) S + S_chunk kept as exp(M) SZ with M <- max(M + decay, m_chunk).

    The chunks are taken with one ``unbind`` (whose gradient is one stack), not by indexing in the loop
    (whose gradient would be a zero-filled copy of the whole array per chunk).
    """
    entering, entering_scales = [], []
    for state, scale, decay in zip(states.unbind(-3), scales.unbind(-1), decays.unbind(-1), strict=True):
        entering.append(current)
        entering_scales.append(current_scale)
        decayed = current_scale + decay
        new_scale = torch.maximum(decayed, scale)
        reference = _finite_or_zero(new_scale)
        current = (
            torch.exp(decayed - reference)[..., None, None] * current
            + torch.exp(scale - reference)[..., None, None] * state
        )
        current_scale = new_scale
    return torch.stack(entering, -3), torch.stack(entering_scales, -1), current, current_scale


# --- the three forms ---------------------------------------------------------------------------------


def _chunk(x: torch.Tensor, n: int, size: int, tail: int, fill: float = 0.0) -> torch.Tensor:
    """[..., T, *rest] -> [..., n, size, *rest], padding T to n * size with ``fill``."""
    T = x.shape[x.ndim - 1 - tail]
    if n * size > T:
        x = torch.nn.functional.pad(x, (0, 0) * tail + (0, n * size - T), value=fill)
    return x.reshape(*x.shape[: x.ndim - 1 - tail], n, size, *x.shape[x.ndim - tail :])


def _chunked(x: Inputs, size: int, return_state: bool):
    T, e, kernel = x.T, x.e, x.kernel
    n = -(-T // size)
    yq, yk, v = (_chunk(t, n, size, 1) for t in (x.yq, x.yk, x.v))
    # 1. intra-chunk attention
    if x.g is None:
        g = None
        log_weight = _causal(size, yq)
    else:
        g = _chunk(x.g, n, size, 0)
        log_weight = _segment_sums(g)
    weight = None
    if x.a is not None:
        a, b = _chunk(x.a, n, size, 0), _chunk(x.b, n, size, 0)
        weight = torch.cos(math.pi / 2 * (a[..., :, None] - b[..., None, :]))
    intra = _attend(kernel, yq, yk, v, log_weight, weight)
    # 2-4. the state path, chunk by chunk (as ``spec.forms.chunked``)
    inter, final, final_scale = _chunk_by_chunk(x, n, size, g, yq, yk, v)
    y = _finish(_merge(intra, _back(inter, yq.dtype)), x.normalize, x.eps)
    y = y.reshape(*y.shape[:-3], n * size, e)[..., :T, :]
    return y, (final, final_scale) if return_state else None


def _chunk_by_chunk(x: Inputs, n: int, size: int, g, yq, yk, v):
    """Steps 2-4 fused, one chunk at a time, the state held as feature row blocks: the torch form of
    ``spec.forms._chunk_by_chunk`` (see there). yq, yk [..., n, C, d], v [..., n, C, e], g [..., n, C] or
    None. Returns the inter-chunk partial (num, den, m) and the final (SZ in table order, log scale)."""
    kernel, e, sd, dev = x.kernel, x.e, x.initial.dtype, yq.device
    d, degrees = yq.shape[-1], tuple(kernel.degrees)
    shapes = block_shapes(d, degrees)
    q_units, q_constant, q_lam = scaled_units(kernel, yq.to(sd), torch, _log_scales)
    k_units, k_constant, k_lam = scaled_units(kernel, yk.to(sd), torch, _log_scales)
    valid = (torch.arange(n * size, device=dev) < x.T).reshape(n, size)
    if g is None:
        to_end, q_log, totals = torch.where(valid, 0.0, -math.inf).to(sd), q_lam, None
    else:
        g = g.to(sd)
        to_end = torch.where(valid, _suffix_sums(g), -math.inf)
        q_log, totals = q_lam + torch.cumsum(g, dim=-1), g.sum(-1).unbind(-1)
    k_log = k_lam + to_end
    chunk_max = k_log.amax(-1)
    kw = None if x.kw is None else _chunk(x.kw, n, size, 1).to(sd)
    values = _values(v.to(sd), kw) * torch.exp(k_log - _finite_or_zero(chunk_max)[..., None])[..., None]
    qw = None if x.qw is None else _chunk(x.qw, n, size, 1).to(sd).unbind(-3)

    # chunks taken with unbind (whose gradient is one stack), not by indexing in the loop
    q_chunks = _chunks_of(q_units, q_constant, n)
    k_chunks = _chunks_of(k_units, k_constant, n)
    rows, table_rows = _orders(d, degrees, dev)
    state, start = [], 0
    for shape in shapes:
        height = block_height(*shape)
        state.append(x.initial.index_select(-2, rows[start : start + height]))
        start += height
    scale = x.initial_scale
    nums, dens, entering = [], [], []
    for c, (weighted, top) in enumerate(zip(values.unbind(-3), chunk_max.unbind(-1), strict=True)):
        product = None
        for f, s in zip(_feature_blocks(shapes, *q_chunks[c]), state, strict=True):
            term = f.transpose(-1, -2) @ s
            product = term if product is None else product + term
        if qw is not None:
            product = (product.reshape(*product.shape[:-1], x.halves, e + 1) * qw[c][..., None]).sum(-2)
        nums.append(product[..., :e])
        dens.append(product[..., e])
        entering.append(scale)
        decayed = scale if totals is None else scale + totals[c]
        new_scale = torch.maximum(decayed, top)
        reference = _finite_or_zero(new_scale)
        weighted = weighted * torch.exp(top - reference)[..., None, None]
        keep = torch.exp(decayed - reference)[..., None, None]
        k_features = _feature_blocks(shapes, *k_chunks[c])
        state = [keep * s + f @ weighted for f, s in zip(k_features, state, strict=True)]
        scale = new_scale
    inter = (torch.stack(nums, -3), torch.stack(dens, -2), q_log + torch.stack(entering, -1)[..., None])
    final = torch.cat(state, dim=-2).index_select(-2, table_rows)
    return inter, final, scale


def _chunks_of(
    units: dict[int, torch.Tensor], constant: torch.Tensor | None, n: int
) -> list[tuple[Any, Any]]:
    """Per chunk ({degree: u [..., d, C]}, constant [..., 1, C] or None) from [..., n, C, d], [..., n, C]."""
    per_degree = {degree: u.transpose(-1, -2).unbind(-3) for degree, u in units.items()}
    constants = [None] * n if constant is None else [c[..., None, :] for c in constant.unbind(-2)]
    return [({degree: u[c] for degree, u in per_degree.items()}, constants[c]) for c in range(n)]


def _feature_blocks(
    shapes, units: dict[int, torch.Tensor], constant: torch.Tensor | None
) -> list[torch.Tensor]:
    """The feature row blocks [..., D_l, C] of one chunk (``spec.feature_blocks.build`` in torch)."""
    out = []
    for n, kind, count, size in shapes:
        if kind == "constant":
            out.append(constant)
        elif kind == "linear":
            out.append(units[1])
        elif kind == "cross":
            u = units[2]
            halves = u.reshape(*u.shape[:-2], count, 2, size, u.shape[-1])
            product = (halves[..., 0, :, None, :] * math.sqrt(2.0)) * halves[..., 1, None, :, :]
            out.append(product.reshape(*u.shape[:-2], count * size * size, u.shape[-1]))
        elif kind == "pairs":
            u = units[2]
            grouped = u.reshape(*u.shape[:-2], count, size, u.shape[-1])
            first, second = _pair_index(size, u.device)
            ones = torch.ones(first.shape, dtype=u.dtype, device=u.device)  # sqrt 2 rounded in u's dtype
            weight = torch.where(first == second, ones, ones * math.sqrt(2.0))[:, None]
            product = grouped.index_select(-2, first) * grouped.index_select(-2, second) * weight
            out.append(product.reshape(*u.shape[:-2], count * first.shape[0], u.shape[-1]))
        else:
            high = _high_degrees(tuple(shape[0] for shape in shapes))
            out.append(_power_features(units[n].transpose(-1, -2), n, high).transpose(-1, -2))
    return out


# Constant index tensors, cached per device. Under torch.compile each is a constant of the graph; a
# function marked so may be called with one set of arguments per graph only, hence one table each.


@torch.compiler.assume_constant_result
def _orders(d: int, degrees: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """[2, D]: every block's table rows, blocks concatenated (``spec.feature_blocks.row_order``), and
    the inverse permutation (``inverse_order``); one table, so one constant per graph."""
    key = ("orders", d, degrees, str(device))
    if key not in _tables:
        _tables[key] = torch.tensor([row_order(d, degrees), inverse_order(d, degrees)], device=device)
    return _tables[key]


@torch.compiler.assume_constant_result
def _pair_index(size: int, device: torch.device) -> torch.Tensor:
    """[2, pairs]: the entries a and b of each pair a <= b in a block of ``size``."""
    key = ("pairs", size, str(device))
    if key not in _tables:
        _tables[key] = torch.tensor(pairs_in_block(size), device=device).T.contiguous()
    return _tables[key]


def _parallel(x: Inputs, return_state: bool):
    T, kernel = x.T, x.kernel
    g = _gates(x)
    rows = max(1, min(T, ROW_BLOCK_ELEMENTS // T))
    sd = x.initial.dtype
    if x.resumed:
        fq, lq = _scaled(kernel, x.yq.to(sd))
        from_start = torch.cumsum(g.to(sd), dim=-1)
    outputs = []
    for r0 in range(0, T, rows):
        r1 = min(T, r0 + rows)
        log_weight = _block_log_weight(g, r0, r1) if x.g is not None else _causal_block(r0, r1, g)
        weight = None
        if x.a is not None:
            weight = torch.cos(math.pi / 2 * (x.a[..., r0:r1, None] - x.b[..., None, :r1]))
        partial = _attend(
            kernel, x.yq[..., r0:r1, :], x.yk[..., :r1, :], x.v[..., :r1, :], log_weight, weight
        )
        if x.resumed:
            qw = None if x.qw is None else x.qw[..., r0:r1, :].to(sd)
            from_state = _query(
                fq[..., r0:r1, :], lq[..., r0:r1], from_start[..., r0:r1], x.initial, x.initial_scale, qw, x.e
            )
            partial = _merge(partial, _back(from_state, g.dtype))
        outputs.append(_finish(partial, x.normalize, x.eps))
    y = torch.cat(outputs, dim=-2)
    if not return_state:
        return y, None
    fk, lk = _scaled(kernel, x.yk.to(sd))
    g = g.to(sd)
    states, scales = _chunk_states(fk, lk, _suffix_sums(g), _values(x.v.to(sd), _to(x.kw, sd)))
    _, _, final, final_scale = _scan(
        states[..., None, :, :], scales[..., None], g.sum(-1)[..., None], x.initial, x.initial_scale
    )
    return y, (final, final_scale)


def _recurrent(x: Inputs, return_state: bool):
    """Token by token: y_t from the state after t-1 (decayed by g_t) merged with token t's own term,
    taken from its score kappa(s_tt); then S <- gamma_t S + phi(k~_t) v_t^T."""
    kernel, e = x.kernel, x.e
    sd = x.initial.dtype
    g = _gates(x).to(sd)
    fq, lq = _scaled(kernel, x.yq.to(sd))
    fk, lk = _scaled(kernel, x.yk.to(sd))
    values = _values(x.v.to(sd), _to(x.kw, sd))
    own_weight = None
    if x.a is not None:
        own_weight = torch.cos(math.pi / 2 * (x.a - x.b))[..., None, None]
    own = _attend(
        kernel, x.yq[..., None, :], x.yk[..., None, :], x.v[..., None, :],
        torch.zeros((), dtype=x.yq.dtype, device=x.yq.device), own_weight,
    )  # fmt: skip
    own = (own[0][..., 0, :], own[1][..., 0], own[2][..., 0])
    state, scale = x.initial, x.initial_scale
    products, scales = [], []
    tokens = zip(fq.unbind(-2), fk.unbind(-2), lk.unbind(-1), values.unbind(-2), g.unbind(-1), strict=True)
    for fq_t, fk_t, lk_t, values_t, g_t in tokens:  # unbind: one stack in the gradient, not T copies
        products.append((fq_t[..., None, :] @ state)[..., 0, :])
        scales.append(scale)
        decayed = scale + g_t
        new_scale = torch.maximum(decayed, lk_t)
        reference = _finite_or_zero(new_scale)
        update = fk_t[..., :, None] * values_t[..., None, :]
        state = (
            torch.exp(decayed - reference)[..., None, None] * state
            + torch.exp(lk_t - reference)[..., None, None] * update
        )
        scale = new_scale
    product = torch.stack(products, dim=-2)
    if x.qw is not None:
        product = (product.reshape(*product.shape[:-1], 2, e + 1) * x.qw.to(sd)[..., None]).sum(-2)
    past = (product[..., :e], product[..., e], lq + g + torch.stack(scales, dim=-1))
    y = _finish(_merge(own, _back(past, x.yq.dtype)), x.normalize, x.eps)
    return y, (state, scale) if return_state else None
