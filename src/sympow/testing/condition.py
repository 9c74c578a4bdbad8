"""The state-path condition number of math.md section 9, in float64 NumPy.

The parallel form sums w_ij kappa_ij >= 0 (normalised kernels) without cancellation. The state path
computes the same kernel as phi(q~_i) . phi(k~_j), a sum over D features whose terms have both signs, so a
state dtype with unit round-off u errs by up to about u sum_f |phi_f(q~_i)| |phi_f(k~_j)|
<= u kbar(sigma |q~_i| |k~_j|), with kbar the kernel with every term in absolute value:

    sympow p:  kbar(x) = x^p            taylor p:  kbar(x) = sum_{n<=p} x^n / n!
    identity:  kbar(x) = x              relu:      kbar(x) = x on the rectified inputs

For relu nothing cancels, but the state path holds its sums relative to a scale set by the norms, so a row
whose actual terms lie far below sigma |q~+| |k~+| (a query whose support misses that of the heavily
weighted keys) loses them to the dtype's range: the bound x, not kappa, is what its error is relative to.

The condition number of output row i is the error bound relative to the scale of the output:

    normalised:     c_i = (sum_{j<=i} w_ij kbar_ij + u^-1 state_i) / |Z_i + eps|
    unnormalised:   c_i = (sum_{j<=i} w_ij kbar_ij |v_j|_inf + u^-1 state_i) / max |N|

with Z_i = sum_{j<=i} w_ij kappa_ij (+ the state's phi(q~_i)^T z) the true denominator, N the true
unnormalised output, and w_ij = exp(sum_{l=j+1..i} g_l) cos(pi/2 (a_i - b_j)). The initial state's term is
the bound on the rounding of phi(q~_i)^T (S, z) that a state path computes (the true sums being
exp(log_scale) times the stored ones, H = 2 halves with proportions, 1 otherwise):

    u^-1 state_i = exp(sum_{l<=i} g_l) sum_h qw_ih sum_f |phi_f(q~_i)| |z_hf|        (normalised)
    u^-1 state_i = exp(sum_{l<=i} g_l) sum_h qw_ih sum_f |phi_f(q~_i)| max_c |S_hfc|  (unnormalised)

qw_i = (cos, sin)(pi a_i / 2) with proportions, 1 without. So c_i is the number that multiplies u in
the accepted error of row i (``tolerances.row_tolerances``): for random directions about d^{p/2}
(d(d+2)/3 at p = 4), for a query nearly orthogonal to every key as large as one likes.

Choices:
- ``max |N|`` is the largest entry of the whole call's output (every batch entry, row and column), the
  scale by which ``tolerances.relative_error`` measures unnormalised errors, so that u c_i is the bound on
  that relative error of row i.
- Where the numerator is 0 (a relu row with all features zero, say) c_i = 0; where it is > 0 and the
  denominator is 0, c_i = inf.
- Normalised output with a kernel that can be negative (odd p, identity) is a usage error of
  ``sympow.attention``; here c_i is still defined (with |Z_i + eps|) and computed.
- Everything is in log space with each row's largest term factored out, so scores of 1e5 and powers up
  to 16 neither overflow nor underflow. The gate sums are differences of float64 prefix sums (relative
  error about 1e-16 of the total log-gate, immaterial for a condition number).
Cost O(T^2 (d + e)) per batch entry, in blocks of rows of at most ``BLOCK_ELEMENTS`` scores.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..spec.features import scaled
from ..spec.kernel import Kernel, make_kernel
from ..spec.state import FIELD_TAILS
from .tolerances import to_numpy

LAYOUTS = ("half", "interleaved")
BLOCK_ELEMENTS = 1 << 21  # entries of one [batch, rows, keys] (or [batch, rows, features]) block


@dataclass(frozen=True)
class _StateTerms:
    """The initial state, batch flattened to B: true sums exp(log_scale) (S, z); H halves of D features.

    log_scale [B]; z [B, H, D]; S [B, H, D, e]."""

    log_scale: np.ndarray
    z: np.ndarray
    S: np.ndarray


@dataclass(frozen=True)
class _Problem:
    """Inputs in float64 with the batch flattened to one axis of size B.

    yq, yk [B, T, d]: sigma^{1/2} R(mu_t) x_t, rectified for relu; log_nq, log_nk [B, T]: log of their
    norms (-inf at 0); v [B, T, e] and log_vmax [B, T] = log |v_t|_inf; prefix [B, T] = sum_{l<=t} g_l or
    None; a, b [B, T] proportions or None; state or None."""

    kernel: Kernel
    yq: np.ndarray
    yk: np.ndarray
    log_nq: np.ndarray
    log_nk: np.ndarray
    v: np.ndarray
    log_vmax: np.ndarray
    prefix: np.ndarray | None
    a: np.ndarray | None
    b: np.ndarray | None
    state: _StateTerms | None
    normalize: bool
    eps: float

    @property
    def B(self) -> int:
        return self.yq.shape[0]

    @property
    def T(self) -> int:
        return self.yq.shape[1]


def condition_numbers(
    q: Any,
    k: Any,
    v: Any,
    *,
    kernel: str = "sympow",
    power: int = 2,
    scale: float | None = None,
    log_gate: Any = None,
    proportions: Any = None,
    rotary: Any = None,
    rotary_layout: str = "half",
    normalize: bool = True,
    eps: float = 0.0,
    initial_state: Any = None,
    form: str | None = None,
    chunk_size: int | None = None,
    backend: str | None = None,
    state_dtype: str | None = None,
) -> np.ndarray:
    """The state-path condition numbers c_i of math.md section 9 (see the module docstring), float64.

    Arguments as for ``sympow.attention``: q, k [..., T, d], v [..., T, e], log_gate [..., T], proportions
    (a, b) each [..., T], rotary [..., T, d/2], initial_state a ``sympow.State``; arrays of any library.
    Leading axes broadcast. Returns c [*batch, T], batch the broadcast leading shape of every input.
    ``form``, ``chunk_size``, ``backend`` and ``state_dtype`` do not change c and are ignored; they are
    accepted so that a call written for ``sympow.attention`` (``AttentionCase.call``) works unchanged.
    """
    batch, problem = _prepare(
        q, k, v, kernel=kernel, power=power, scale=scale, log_gate=log_gate, proportions=proportions,
        rotary=rotary, rotary_layout=rotary_layout, normalize=normalize, eps=eps, state=initial_state,
    )  # fmt: skip
    with np.errstate(divide="ignore", over="ignore", under="ignore"):
        c = _normalised(problem) if normalize else _unnormalised(problem)
    return c.reshape((*batch, problem.T))


# ----------------------------------------------------------------------------------------------------------
# Preparation: validation, broadcasting, rotary, scaling


def _prepare(
    q: Any, k: Any, v: Any, *, kernel: str, power: int, scale: float | None, log_gate: Any,
    proportions: Any, rotary: Any, rotary_layout: str, normalize: bool, eps: float, state: Any,
) -> tuple[tuple[int, ...], _Problem]:  # fmt: skip
    the_kernel = _kernel(kernel, power)
    q, k, v = to_numpy(q), to_numpy(k), to_numpy(v)
    T, d, e = _check_shapes(q, k, v)
    sigma = _scale(scale, d)
    if rotary_layout not in LAYOUTS:
        raise ValueError(f"rotary_layout must be one of {LAYOUTS}, got {rotary_layout!r}")
    if not (isinstance(eps, int | float) and math.isfinite(eps) and eps >= 0):
        raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
    g = None if log_gate is None else to_numpy(log_gate)
    a = b = None
    if proportions is not None:
        a, b = (to_numpy(x) for x in proportions)
    w = None if rotary is None else to_numpy(rotary)
    fields = _state_fields(state)
    leading = {
        "q": q.shape[:-2],
        "k": k.shape[:-2],
        "v": v.shape[:-2],
        "log_gate": None if g is None else g.shape[:-1],
        "proportions[0]": None if a is None else a.shape[:-1],
        "proportions[1]": None if b is None else b.shape[:-1],
        "rotary": None if w is None else w.shape[:-2],
        **{f"initial_state.{name}": shape for name, (_, shape) in fields.items()},
    }
    batch = _broadcast(leading)
    size = math.prod(batch)

    def flat(x: np.ndarray | None, tail: tuple[int, ...]) -> np.ndarray | None:
        return None if x is None else np.broadcast_to(x, (*batch, *tail)).reshape((size, *tail))

    q, k, v = flat(q, (T, d)), flat(k, (T, d)), flat(v, (T, e))
    mu0 = fields.get("mu", (None, None))[0]
    if w is not None or mu0 is not None:
        if d % 2:
            raise ValueError(f"rotary needs an even head dimension d, got d = {d}")
        increments = np.zeros((size, T, d // 2)) if w is None else flat(w, (T, d // 2))
        mu = np.cumsum(increments, axis=-2)
        if mu0 is not None:
            mu = mu + flat(mu0, (d // 2,))[:, None, :]
        q, k = _rotate(q, mu, rotary_layout), _rotate(k, mu, rotary_layout)
    if the_kernel.rectify:
        q, k = np.maximum(q, 0.0), np.maximum(k, 0.0)
    root = math.sqrt(sigma)
    yq, yk = q * root, k * root
    terms = None if state is None else _state_terms(fields, the_kernel, d, e, a is not None, flat)
    prefix = None if g is None else np.cumsum(flat(g, (T,)), axis=-1)
    with np.errstate(divide="ignore"):
        log_nq, log_nk = np.log(np.linalg.norm(yq, axis=-1)), np.log(np.linalg.norm(yk, axis=-1))
        log_vmax = np.log(np.max(np.abs(v), axis=-1, initial=0.0))
    problem = _Problem(
        kernel=the_kernel, yq=yq, yk=yk, log_nq=log_nq, log_nk=log_nk, v=v, log_vmax=log_vmax,
        prefix=prefix, a=flat(a, (T,)), b=flat(b, (T,)), state=terms, normalize=bool(normalize),
        eps=float(eps),
    )  # fmt: skip
    return batch, problem


def _kernel(name: str, power: int) -> Kernel:
    if name in ("sympow", "taylor") and (isinstance(power, bool) or not isinstance(power, int) or power < 1):
        raise ValueError(f"power must be an integer >= 1 for kernel {name!r}, got {power!r}")
    return make_kernel(name, power)


def _check_shapes(q: np.ndarray, k: np.ndarray, v: np.ndarray) -> tuple[int, int, int]:
    for name, x in (("q", q), ("k", k), ("v", v)):
        if x.ndim < 2:
            raise ValueError(f"{name} must have shape [..., T, features], got {x.shape}")
    T, d = q.shape[-2:]
    if k.shape[-2:] != (T, d):
        raise ValueError(f"k must have shape [..., T={T}, d={d}] like q, got {k.shape}")
    if v.shape[-2] != T:
        raise ValueError(f"v must have shape [..., T={T}, e], got {v.shape}")
    return T, d, v.shape[-1]


def _scale(scale: float | None, d: int) -> float:
    if scale is None:
        return d**-0.5
    if (
        isinstance(scale, bool)
        or not isinstance(scale, int | float)
        or not (math.isfinite(scale) and scale > 0)
    ):
        raise ValueError(f"scale must be a finite number > 0 or None, got {scale!r}")
    return float(scale)


def _broadcast(leading: dict[str, tuple[int, ...] | None]) -> tuple[int, ...]:
    shapes = {name: shape for name, shape in leading.items() if shape is not None}
    try:
        return tuple(np.broadcast_shapes(*shapes.values()))
    except ValueError:
        listed = ", ".join(f"{name} {shape}" for name, shape in shapes.items())
        raise ValueError(f"leading (batch) axes do not broadcast: {listed}") from None


def _state_fields(state: Any) -> dict[str, tuple[np.ndarray, tuple[int, ...]]]:
    """{field: (float64 array, leading shape)} of an initial state (mu only when present)."""
    if state is None:
        return {}
    missing = [name for name in ("S", "z", "mu", "log_scale") if not hasattr(state, name)]
    if missing:
        raise TypeError(f"initial_state must be a sympow.State, got {type(state).__name__}")
    out = {}
    for name, tail in FIELD_TAILS.items():
        value = getattr(state, name)
        if value is None:
            continue
        x = to_numpy(value)
        out[name] = (x, x.shape[: x.ndim - tail])
    return out


def _state_terms(
    fields: dict[str, tuple[np.ndarray, tuple[int, ...]]], kernel: Kernel, d: int, e: int, halved: bool,
    flat: Any,
) -> _StateTerms:  # fmt: skip
    halves = 2 if halved else 1
    size = kernel.feature_size(d)
    S, z = fields["S"][0], fields["z"][0]
    if S.shape[-2:] != (halves * size, e) or z.shape[-1:] != (halves * size,):
        raise ValueError(
            f"initial_state must have S [..., {halves * size}, {e}] and z [..., {halves * size}] for kernel "
            f"{kernel.name!r} with d = {d} and {halves} half(s), got {S.shape} and {z.shape}"
        )
    S = flat(S, (halves * size, e))
    return _StateTerms(
        log_scale=flat(fields["log_scale"][0], ()),
        z=flat(z, (halves * size,)).reshape((-1, halves, size)),
        S=S.reshape((-1, halves, size, e)),
    )


def _rotate(x: np.ndarray, mu: np.ndarray, layout: str) -> np.ndarray:
    """R(mu_t) x_t: x [B, T, d], mu [B, T, d/2]; pairs (m, m + d/2) ("half") or (2m, 2m + 1)."""
    half = x.shape[-1] // 2
    if layout == "half":
        first, second = x[..., :half], x[..., half:]
    else:
        first, second = x[..., 0::2], x[..., 1::2]
    cos, sin = np.cos(mu), np.sin(mu)
    new_first, new_second = first * cos - second * sin, first * sin + second * cos
    if layout == "half":
        return np.concatenate([new_first, new_second], axis=-1)
    return np.stack([new_first, new_second], axis=-1).reshape(x.shape)


# ----------------------------------------------------------------------------------------------------------
# Row blocks: every quantity of a row is carried as exp(m_i) times a scaled value, m_i the row's largest
# log-term of the numerator, so the scaled terms lie in [0, 1].


@dataclass(frozen=True)
class _Block:
    """Rows r0..r1 of every batch entry: m [B, R] (finite), numerator [B, R] = exp(-m) * numerator,
    total [B, R] (normalised: exp(-m) Z) or [B, R, e] (unnormalised: exp(-m) N)."""

    m: np.ndarray
    numerator: np.ndarray
    total: np.ndarray


def _blocks(p: _Problem) -> list[tuple[int, int, _Block]]:
    widest = max(p.T, 1 if p.state is None else p.state.z.shape[-1])
    rows = max(1, min(p.T, BLOCK_ELEMENTS // max(1, p.B * widest)))
    return [(r0, min(p.T, r0 + rows), _block(p, r0, min(p.T, r0 + rows))) for r0 in range(0, p.T, rows)]


def _block(p: _Problem, r0: int, r1: int) -> _Block:
    log_w = _log_weights(p, r0, r1)
    s = np.einsum("brd,bjd->brj", p.yq[:, r0:r1], p.yk[:, :r1])
    log_bar = _log_kbar(p.kernel, p.log_nq[:, r0:r1, None] + p.log_nk[:, None, :r1], s)
    log_terms = log_w + log_bar
    if not p.normalize:
        log_terms = log_terms + p.log_vmax[:, None, :r1]
    state_bound, state_value = _query_state(p, r0, r1)
    m = np.maximum(np.max(log_terms, axis=-1), state_bound)
    m = np.where(np.isfinite(m), m, 0.0)  # a row of zeros: any finite m does
    numerator = np.sum(np.exp(log_terms - m[..., None]), axis=-1) + np.exp(state_bound - m)
    signed = _signed_terms(p.kernel, s, log_w, m[..., None])
    if p.normalize:
        total = np.sum(signed, axis=-1)
    else:
        total = np.einsum("brj,bje->bre", signed, p.v[:, :r1])
    if state_value is not None:
        log_factor, core = state_value
        shift = log_factor - m
        total = total + np.sign(core) * np.exp(
            np.log(np.abs(core)) + (shift if p.normalize else shift[..., None])
        )
    return _Block(m=m, numerator=numerator, total=total)


def _log_weights(p: _Problem, r0: int, r1: int) -> np.ndarray:
    """log w_ij [B, R, r1] for rows i in r0..r1-1 and keys j < r1; -inf where j > i."""
    log_w = np.zeros((p.B, r1 - r0, r1))
    if p.prefix is not None:
        log_w = log_w + (p.prefix[:, r0:r1, None] - p.prefix[:, None, :r1])
    if p.a is not None:
        cos = np.cos((math.pi / 2) * (p.a[:, r0:r1, None] - p.b[:, None, :r1]))
        log_w = log_w + np.log(np.maximum(cos, 0.0))
    rows = np.arange(r0, r1)[:, None]
    cols = np.arange(r1)[None, :]
    return np.where(cols <= rows, log_w, -np.inf)


def _log_kbar(kernel: Kernel, log_x: np.ndarray, s: np.ndarray) -> np.ndarray:
    """log kbar of x = sigma |q~| |k~| (log_x; rectified inputs for relu, whose kbar is x)."""
    del s  # kbar depends on the norms only
    terms = [
        np.zeros_like(log_x) if n == 0 else n * log_x + math.log(c)
        for n, c in zip(kernel.degrees, kernel.coefficients, strict=True)
    ]
    return terms[0] if len(terms) == 1 else np.logaddexp.reduce(terms, axis=0)


def _signed_terms(kernel: Kernel, s: np.ndarray, log_w: np.ndarray, m: np.ndarray) -> np.ndarray:
    """w_ij kappa_ij exp(-m_i), each term sign * exp((log |c_n s^n| + log w) - m)."""
    if kernel.rectify:
        return np.exp((np.log(np.maximum(s, 0.0)) + log_w) - m)
    log_s, sign = np.log(np.abs(s)), np.sign(s)
    total = np.zeros(np.broadcast_shapes(s.shape, log_w.shape))
    for n, c in zip(kernel.degrees, kernel.coefficients, strict=True):
        if n == 0:
            total = total + np.exp((math.log(c) + log_w) - m)
        else:
            total = total + sign**n * np.exp((n * log_s + math.log(c) + log_w) - m)
    return total


def _query_state(p: _Problem, r0: int, r1: int) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray] | None]:
    """The initial state's terms for rows r0..r1: (log of u^-1 state_i [B, R] (-inf without a state),
    (log_factor [B, R], core) with exp(log_factor) core = phi(q~_i)^T z ([B, R]) or phi(q~_i)^T S ([B, R,
    e]), weighted by the gates from the start and the query's proportions), or None without a state."""
    if p.state is None:
        return np.full((p.B, r1 - r0), -np.inf), None
    features, lam = scaled(p.kernel, p.yq[:, r0:r1], np)  # phi(q~) = exp(lam) features
    st = p.state
    weight = _query_halves(p, r0, r1)  # [B, R, H]
    if p.normalize:
        core = np.einsum("brf,bhf,brh->br", features, st.z, weight)
        bound = np.einsum("brf,bhf,brh->br", np.abs(features), np.abs(st.z), weight)
    else:
        core = np.einsum("brf,bhfe,brh->bre", features, st.S, weight)
        bound = np.einsum(
            "brf,bhf,brh->br", np.abs(features), np.max(np.abs(st.S), axis=-1, initial=0.0), weight
        )
    log_factor = lam + st.log_scale[:, None]
    if p.prefix is not None:
        log_factor = log_factor + p.prefix[:, r0:r1]
    return log_factor + np.log(bound), (log_factor, core)


def _query_halves(p: _Problem, r0: int, r1: int) -> np.ndarray:
    """(cos, sin)(pi a_i / 2) [B, R, 2] with proportions, ones [B, R, 1] without."""
    if p.a is None:
        return np.ones((p.B, r1 - r0, 1))
    angle = (math.pi / 2) * p.a[:, r0:r1]
    return np.stack([np.cos(angle), np.sin(angle)], axis=-1)


# ----------------------------------------------------------------------------------------------------------
# The two quotients


def _normalised(p: _Problem) -> np.ndarray:
    """c_i = numerator / |Z_i + eps|, every term scaled by exp(-m_i)."""
    c = np.zeros((p.B, p.T))
    for r0, r1, block in _blocks(p):
        den = block.total
        if p.eps > 0:
            den = den + np.exp(np.minimum(math.log(p.eps) - block.m, 700.0))
        c[:, r0:r1] = _quotient(block.numerator, np.abs(den))
    return c


def _unnormalised(p: _Problem) -> np.ndarray:
    """c_i = numerator_i / max |N|, the maximum over the whole output, in log space."""
    log_num = np.zeros((p.B, p.T))
    peak = -np.inf
    for r0, r1, block in _blocks(p):
        log_num[:, r0:r1] = block.m + np.log(block.numerator)
        row_peak = block.m + np.log(np.max(np.abs(block.total), axis=-1, initial=0.0))
        peak = max(peak, float(np.max(row_peak, initial=-np.inf)))
    if peak == -np.inf:
        return np.where(np.isfinite(log_num), np.inf, 0.0)
    return np.exp(log_num - peak)


def _quotient(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator with 0 where the numerator is 0 and inf where only the denominator is."""
    safe = np.where(denominator > 0, denominator, 1.0)
    return np.where(numerator > 0, np.where(denominator > 0, numerator / safe, np.inf), 0.0)
