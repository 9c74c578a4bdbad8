r"""The seeds' named layers on top of ``sympow.attention`` (math.md sections 1 to 3).

Each variant turns its own per-token parameters into the arguments of ``attention`` and makes one call:

    conformal_sympow   sympow p (even) with gates g_t = logsigmoid(c + u_t) and rotary increments
                       beta_t theta, beta_t = 1 + tanh(r_t), theta_m = 2 pi / N^(2m/d)
    leapformer         relu features re-weighted by cos(pi/2 (a_i - b_j)), the proportions a, b from a
                       small per-token network (Linear -> ReLU -> Linear -> sigmoid) or given
    rebased            sympow p = 2 on gamma * LN(x) + beta of q and k
    based              taylor p = 2: 1 + s + s^2 / 2

Written against the array API only (array_api_compat); no framework is imported. Every variant checks its
own parameter arrays (library, dtype, device, shape) before computing anything and raises ``ValueError``
or ``TypeError`` naming the argument; ``attention`` then checks the rest. ``VARIANTS`` maps each name to
its function and ``variant_parameters`` draws seeded NumPy parameters for it (for ``sympow validate`` and
the benchmarks). The options of ``attention`` that a variant does not set itself (form, chunk_size,
initial_state, return_state, backend, state_dtype, sequence_group, sequence_exchange, cu_seqlens) pass
through unchanged; every per-token map here is the token's own, so packed sequences (``cu_seqlens``)
need nothing more of a variant.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

from array_api_compat import array_namespace, device

from .api import attention
from .spec.checks import _any, _check_array, _check_int, broadcast_shapes
from .spec.prepare import compute_dtype
from .spec.rotary import has_float64
from .spec.state import State

__all__ = [
    "VARIANTS", "ProportionNet", "based", "conformal_sympow", "leapformer", "rebased",
    "variant_parameters",
]  # fmt: skip


class ProportionNet(NamedTuple):
    """Weights of LeaPformer's per-token proportion network x -> sigmoid(relu(x W1 + b1) W2 + b2).

    ``w1`` [d, h], ``b1`` [h], ``w2`` [h, 1], ``b2`` [1]; shared by every batch axis (head, batch). Any
    sequence of four arrays in this order is accepted where a ``ProportionNet`` is expected.
    """

    w1: Any
    b1: Any
    w2: Any
    b2: Any


# ----------------------------------------------------------------------------------------------------------
# Checks shared by the variants


def _namespace(q: Any, k: Any, v: Any) -> tuple[Any, Any]:
    """(xp, device) of q after checking that q, k, v are floating arrays of one library and device."""
    try:
        xp = array_namespace(q)
    except TypeError:
        raise TypeError(f"q must be an array of the array API standard, got {type(q).__name__}") from None
    dev = device(q)
    for name, x in (("q", q), ("k", k), ("v", v)):
        _check_array(name, x, xp, dev, 2)
    return xp, dev


def _check_per_token(name: str, x: Any, xp: Any, dev: Any, T: int) -> None:
    """x is a floating array [..., T] of q's library and device, without NaN."""
    _check_array(name, x, xp, dev, 1)
    if x.shape[-1] != T:
        raise ValueError(f"{name} must have shape [..., T={T}] (one value per token), got {tuple(x.shape)}")
    if _any(xp.isnan(x), xp):
        raise ValueError(f"{name} must not contain NaN")


def _check_real(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a real number, got {value!r} of type {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return float(value)


def _check_nonnegative(name: str, value: Any, *, positive: bool = False) -> float:
    value = _check_real(name, value)
    if value < 0 or (positive and value == 0):
        raise ValueError(f"{name} must be {'> 0' if positive else '>= 0'}, got {value!r}")
    return value


def _work_dtype(xp: Any, dtype: Any) -> Any:
    """The dtype a variant computes its inputs in: float64 for float64, else float32 (math.md section 7)."""
    return compute_dtype(xp, dtype)


# ----------------------------------------------------------------------------------------------------------
# Stable elementwise maps


def log_sigmoid(x: Any, xp: Any) -> Any:
    """log sigmoid(x) = -softplus(-x) = min(x, 0) - log1p(exp(-|x|)), never exp of a positive number.

    Exactly 0 where exp(-|x|) underflows against 1 (x large), always <= 0, -inf at x = -inf.
    """
    return xp.where(x < 0, x, xp.zeros_like(x)) - xp.log1p(xp.exp(-xp.abs(x)))


def sigmoid(x: Any, xp: Any) -> Any:
    """1 / (1 + exp(-x)) from exp(-|x|) <= 1 only, so nothing overflows; values in [0, 1]."""
    small = xp.exp(-xp.abs(x))
    return xp.where(x >= 0, 1.0 / (1.0 + small), small / (1.0 + small))


def conformal_frequencies(d: int, max_length: int) -> list[float]:
    """theta_m = 2 pi / N^(2m/d) for m = 0 .. d/2 - 1, N = ``max_length`` (math.md section 3)."""
    return [2.0 * math.pi * float(max_length) ** (-2.0 * m / d) for m in range(d // 2)]


def layer_norm(x: Any, gamma: Any, beta: Any, ln_eps: float, xp: Any) -> Any:
    """gamma * (x - mean) / sqrt(var + ln_eps) + beta over the last axis (biased variance).

    x [..., T, d]; gamma, beta [..., d] broadcast over the token axis. A constant row with ln_eps = 0
    normalises to 0 (not NaN).
    """
    mean = xp.mean(x, axis=-1, keepdims=True)
    centred = x - mean
    variance = xp.mean(centred * centred, axis=-1, keepdims=True) + ln_eps
    root = xp.sqrt(xp.where(variance > 0, variance, xp.ones_like(variance)))
    return gamma[..., None, :] * (centred / root) + beta[..., None, :]


# ----------------------------------------------------------------------------------------------------------
# The variants


def conformal_sympow(
    q: Any,
    k: Any,
    v: Any,
    *,
    gate_logits: Any,
    rotary_logits: Any,
    max_length: int,
    power: int = 2,
    gate_bias: float = 6.9,
    scale: float | None = None,
    rotary_layout: str = "half",
    normalize: bool = True,
    eps: float = 0.0,
    form: str = "auto",
    chunk_size: int = 64,
    initial_state: State | None = None,
    return_state: bool = False,
    backend: str | None = None,
    state_dtype: str | None = None,
    sequence_group: Any = None,
    sequence_exchange: str = "auto",
    cu_seqlens: Any = None,
) -> Any:
    r"""Conformal symmetric-power attention: sympow p with data-dependent gates and rotary.

    Per token t (one scalar per head and token, math.md sections 2 and 3):

        g_t    = logsigmoid(c + u_t) = -softplus(-(c + u_t))     (log-gate, <= 0; c = ``gate_bias``)
        beta_t = 1 + tanh(r_t)                                    (in [0, 2])
        w_t    = beta_t * theta,  theta_m = 2 pi / N^(2m/d), m = 0 .. d/2 - 1, N = ``max_length``

    then ``attention(q, k, v, kernel="sympow", power=p, log_gate=g, rotary=w)``: the state update is
    S <- gamma_t R_bar(w_t) S + phi(k_t) v_t^T, a scaling and a rotation. With u_t -> +inf every gate is 1
    (g = 0 exactly); with r_t -> -inf, beta = 0 and no rotation.

    Shapes: q, k [..., T, d] (d even); v [..., T, e]; ``gate_logits`` u and ``rotary_logits`` r [..., T]
    (leading axes broadcast with those of q, k, v; +-inf allowed, NaN not). Returns y [..., T, e] in the
    dtype of the inputs, and the State with ``return_state=True``. The gates are computed in float32 (or
    float64 for float64 inputs) and the increments in float64 where the namespace has it.
    """
    xp, dev = _namespace(q, k, v)
    T, d = q.shape[-2], q.shape[-1]
    if d % 2:
        raise ValueError(
            f"conformal_sympow needs an even head dimension d (rotary pairs), got q with d = {d}"
        )
    _check_per_token("gate_logits", gate_logits, xp, dev, T)
    _check_per_token("rotary_logits", rotary_logits, xp, dev, T)
    broadcast_shapes(
        {"q": tuple(q.shape[:-2]), "k": tuple(k.shape[:-2]), "v": tuple(v.shape[:-2]),
         "gate_logits": tuple(gate_logits.shape[:-1]), "rotary_logits": tuple(rotary_logits.shape[:-1])}
    )  # fmt: skip
    max_length = _check_int("max_length", max_length, 1)
    gate_bias = _check_real("gate_bias", gate_bias)

    work = _work_dtype(xp, q.dtype)
    log_gate = log_sigmoid(xp.astype(gate_logits, work) + gate_bias, xp)
    angle_dtype = xp.float64 if has_float64(xp) else work
    beta = 1.0 + xp.tanh(xp.astype(rotary_logits, angle_dtype))
    theta = xp.asarray(conformal_frequencies(d, max_length), dtype=angle_dtype, device=dev)
    increments = beta[..., None] * theta
    return attention(
        q, k, v, kernel="sympow", power=power, scale=scale, log_gate=log_gate, rotary=increments,
        rotary_layout=rotary_layout, normalize=normalize, eps=eps, form=form, chunk_size=chunk_size,
        initial_state=initial_state, return_state=return_state, backend=backend, state_dtype=state_dtype,
        sequence_group=sequence_group, sequence_exchange=sequence_exchange, cu_seqlens=cu_seqlens,
    )  # fmt: skip


def proportions_from_net(x: Any, net: ProportionNet, xp: Any) -> Any:
    """sigmoid(relu(x W1 + b1) W2 + b2)[..., 0]: [..., T, d] -> [..., T] in [0, 1], in the dtype of x."""
    w1, b1, w2, b2 = (xp.astype(w, x.dtype) for w in net)
    hidden = xp.matmul(x, w1) + b1
    hidden = xp.where(hidden > 0, hidden, xp.zeros_like(hidden))
    return sigmoid(xp.matmul(hidden, w2) + b2, xp)[..., 0]


def _proportion_nets(proportion_net: Any, xp: Any, dev: Any, d: int) -> tuple[ProportionNet, ProportionNet]:
    """(query net, key net) from one shared net (four arrays) or a pair of nets, each checked."""
    if not isinstance(proportion_net, (tuple, list)) or len(proportion_net) not in (2, 4):
        raise TypeError(
            "proportion_net must be a ProportionNet (w1, b1, w2, b2) or a pair (query net, key net) of them, "
            f"got {type(proportion_net).__name__}"
        )
    if len(proportion_net) == 4:
        nets = {"proportion_net": proportion_net}
    else:
        nets = {f"proportion_net[{i}]": net for i, net in enumerate(proportion_net)}
    checked = []
    for label, net in nets.items():
        if not isinstance(net, (tuple, list)) or len(net) != 4:
            raise TypeError(
                f"{label} must be a ProportionNet (w1 [d, h], b1 [h], w2 [h, 1], b2 [1]), "
                f"got {type(net).__name__}"
            )
        net = ProportionNet(*net)
        for field, x in zip(ProportionNet._fields, net, strict=True):
            _check_array(f"{label}.{field}", x, xp, dev, 1)
        h = net.w1.shape[-1]
        expected = {"w1": (d, h), "b1": (h,), "w2": (h, 1), "b2": (1,)}
        for field, shape in expected.items():
            got = tuple(getattr(net, field).shape)
            if got != shape:
                raise ValueError(
                    f"{label}.{field} must have shape {list(shape)} (d = {d} from q, h = {h} from w1), got "
                    f"{list(got)}"
                )
        if h < 1:
            raise ValueError(f"{label}.w1 must have a hidden size h >= 1, got shape {list(net.w1.shape)}")
        checked.append(net)
    return (checked[0], checked[0]) if len(checked) == 1 else (checked[0], checked[1])


def leapformer(
    q: Any,
    k: Any,
    v: Any,
    *,
    proportions: tuple[Any, Any] | None = None,
    proportion_net: Any = None,
    denominator_floor: float | None = None,
    scale: float | None = None,
    normalize: bool = True,
    eps: float = 0.0,
    form: str = "auto",
    chunk_size: int = 64,
    initial_state: State | None = None,
    return_state: bool = False,
    backend: str | None = None,
    state_dtype: str | None = None,
    sequence_group: Any = None,
    sequence_exchange: str = "auto",
    cu_seqlens: Any = None,
) -> Any:
    r"""LeaPformer: relu linear attention re-weighted by learned proportions (math.md section 2).

    With q' = sigma^{1/2} relu(q), k' = sigma^{1/2} relu(k) (sigma = ``scale``, default d^-1/2: the same as
    LeaPformer's q pre-scaled by d^-1/2) and proportions a_i, b_j in [0, 1],

        kappa_ij w_ij = <q'_i, k'_j> cos(pi/2 (a_i - b_j)),   N_i = sum_{j<=i} kappa_ij w_ij v_j,
        Z_i = sum_{j<=i} kappa_ij w_ij,   y_i = N_i / (Z_i + eps)   (or N_i with normalize=False).

    Exactly one of ``proportions`` = (a, b), each [..., T], and ``proportion_net`` is given. The network,
    as in LeaPformer, acts on each token's own rectified inputs: a_i = net_q(relu(sigma q_i)),
    b_j = net_k(relu(k_j)) with net(x) = sigmoid(relu(x W1 + b1) W2 + b2); ``proportion_net`` is one
    ``ProportionNet`` shared by queries and keys or a pair (query net, key net); W1 [d, h], b1 [h],
    W2 [h, 1], b2 [1]. Since a_i and b_j depend on token i or j alone, the recurrence stays exact.

    ``denominator_floor`` f (LeaPformer's code uses 0.1) replaces the normaliser:
    y_i = N_i / max(Z_i + eps, f). N and Z come from one ``attention`` call with normalize=False on v
    extended by a column of ones, in any form; the state (given as ``initial_state`` and returned) then
    has e + 1 value columns, the last one carrying z.

    Shapes: q, k [..., T, d]; v [..., T, e]; returns y [..., T, e] in the input dtype (and the State,
    S [..., 2d, e] or [..., 2d, e+1] with a floor, with ``return_state=True``).
    """
    xp, dev = _namespace(q, k, v)
    d = q.shape[-1]
    if (proportions is None) == (proportion_net is None):
        raise ValueError(
            "leapformer needs exactly one of proportions=(a, b) and proportion_net, got "
            + ("both" if proportions is not None else "neither")
        )
    nets = None if proportion_net is None else _proportion_nets(proportion_net, xp, dev, d)
    if denominator_floor is not None:
        denominator_floor = _check_nonnegative("denominator_floor", denominator_floor, positive=True)
        if normalize is not True:
            raise ValueError(
                f"denominator_floor needs normalize=True (it floors the normaliser), got {normalize!r}"
            )
    if scale is not None:
        scale = _check_nonnegative("scale", scale, positive=True)

    if nets is not None:
        sigma = d**-0.5 if scale is None else scale
        work = _work_dtype(xp, q.dtype)
        query = xp.astype(q, work) * sigma
        key = xp.astype(k, work)
        proportions = tuple(
            proportions_from_net(xp.where(x > 0, x, xp.zeros_like(x)), net, xp)
            for x, net in zip((query, key), nets, strict=True)
        )
    options = dict(
        kernel="relu", scale=scale, proportions=proportions, form=form, chunk_size=chunk_size,
        initial_state=initial_state, return_state=return_state, backend=backend, state_dtype=state_dtype,
        sequence_group=sequence_group, sequence_exchange=sequence_exchange, cu_seqlens=cu_seqlens,
    )  # fmt: skip
    if denominator_floor is None:
        return attention(q, k, v, normalize=normalize, eps=eps, **options)

    ones = xp.ones((*v.shape[:-1], 1), dtype=v.dtype, device=dev)
    result = attention(q, k, xp.concat([v, ones], axis=-1), normalize=False, **options)
    extended, state = result if return_state else (result, None)
    numerator, denominator = extended[..., :-1], extended[..., -1:] + eps
    y = numerator / xp.where(
        denominator > denominator_floor, denominator, xp.full_like(denominator, denominator_floor)
    )
    return (y, state) if return_state else y


def rebased(
    q: Any,
    k: Any,
    v: Any,
    *,
    gamma: Any,
    beta: Any,
    ln_eps: float = 1e-5,
    normalize: bool = True,
    eps: float = 0.0,
    form: str = "auto",
    chunk_size: int = 64,
    initial_state: State | None = None,
    return_state: bool = False,
    backend: str | None = None,
    state_dtype: str | None = None,
    sequence_group: Any = None,
    sequence_exchange: str = "auto",
    cu_seqlens: Any = None,
) -> Any:
    r"""ReBased: sympow p = 2 on affinely layer-normed q and k (math.md section 1).

        LN(x) = (x - mean(x)) / sqrt(var(x) + ln_eps)       over the feature axis (biased variance)
        q^ = gamma * LN(q) + beta,   k^ = gamma * LN(k) + beta
        kappa_ij = (d^-1/2 <q^_i, k^_j>)^2,   y_i = N_i / (Z_i + eps)   (or N_i)

    ``gamma`` and ``beta`` [..., d]: per-head scale and shift of the feature axis, shared by q and k; their
    leading axes broadcast with the batch axes of q (no token axis: the same gamma for every token).

    Shapes: q, k [..., T, d]; v [..., T, e]; returns y [..., T, e] in the input dtype (and the State with
    ``return_state=True``). The layer norm is computed in float32 (float64 for float64 inputs) and cast
    back to the input dtype.
    """
    xp, dev = _namespace(q, k, v)
    d = q.shape[-1]
    leading = {"q": tuple(q.shape[:-2]), "k": tuple(k.shape[:-2])}
    for name, x in (("gamma", gamma), ("beta", beta)):
        _check_array(name, x, xp, dev, 1)
        if x.shape[-1] != d:
            raise ValueError(
                f"{name} must have shape [..., d={d}] (the feature axis of q), got {tuple(x.shape)}"
            )
        leading[name] = tuple(x.shape[:-1])
    broadcast_shapes(leading)
    ln_eps = _check_nonnegative("ln_eps", ln_eps)

    work = _work_dtype(xp, q.dtype)
    g, b = xp.astype(gamma, work), xp.astype(beta, work)
    q_hat, k_hat = (xp.astype(layer_norm(xp.astype(x, work), g, b, ln_eps, xp), q.dtype) for x in (q, k))
    return attention(
        q_hat, k_hat, v, kernel="sympow", power=2, normalize=normalize, eps=eps, form=form,
        chunk_size=chunk_size, initial_state=initial_state, return_state=return_state, backend=backend,
        state_dtype=state_dtype, sequence_group=sequence_group, sequence_exchange=sequence_exchange,
        cu_seqlens=cu_seqlens,
    )  # fmt: skip


def based(
    q: Any,
    k: Any,
    v: Any,
    *,
    normalize: bool = True,
    eps: float = 0.0,
    form: str = "auto",
    chunk_size: int = 64,
    initial_state: State | None = None,
    return_state: bool = False,
    backend: str | None = None,
    state_dtype: str | None = None,
    sequence_group: Any = None,
    sequence_exchange: str = "auto",
    cu_seqlens: Any = None,
) -> Any:
    r"""Based: the second-order Taylor kernel (math.md section 1).

        s_ij = d^-1/2 <q_i, k_j>,   kappa_ij = 1 + s_ij + s_ij^2 / 2  (> 0),
        N_i = sum_{j<=i} kappa_ij v_j,  Z_i = sum_{j<=i} kappa_ij,  y_i = N_i / (Z_i + eps)  (or N_i)

    i.e. ``attention(q, k, v, kernel="taylor", power=2)``, feature size 1 + d + d(d+1)/2. Shapes: q, k
    [..., T, d]; v [..., T, e]; returns y [..., T, e] in the input dtype (and the State with
    ``return_state=True``).
    """
    _namespace(q, k, v)
    return attention(
        q, k, v, kernel="taylor", power=2, normalize=normalize, eps=eps, form=form, chunk_size=chunk_size,
        initial_state=initial_state, return_state=return_state, backend=backend, state_dtype=state_dtype,
        sequence_group=sequence_group, sequence_exchange=sequence_exchange, cu_seqlens=cu_seqlens,
    )  # fmt: skip


VARIANTS: dict[str, Callable[..., Any]] = {
    "based": based,
    "conformal_sympow": conformal_sympow,
    "leapformer": leapformer,
    "rebased": rebased,
}


def variant_parameters(name: str, batch: tuple[int, ...], T: int, d: int, seed: int = 0) -> dict[str, Any]:
    """Seeded keyword arguments of variant ``name`` beyond q, k, v, as NumPy float64 arrays (and numbers).

    conformal_sympow: gate_logits, rotary_logits [*batch, T] (standard normal), max_length = T;
    leapformer: proportion_net, a pair of ProportionNet with h = d and weights of scale d^-1/2, and
    denominator_floor = 0.1 as in LeaPformer's code; rebased: gamma = 1 + N(0, 0.1^2), beta =
    N(0, 0.1^2), each [*batch, d]; based: none. ``sympow.testing.convert(params, xp, dtype)`` moves them to
    another namespace (tuples stay tuples; the variants accept plain 4-tuples as nets).
    """
    import numpy as np  # only the parameter factory needs NumPy

    if name not in VARIANTS:
        raise ValueError(f"name must be one of {sorted(VARIANTS)}, got {name!r}")
    batch = tuple(int(n) for n in batch)
    rng = np.random.default_rng(np.random.SeedSequence([seed, sorted(VARIANTS).index(name)]))
    if name == "conformal_sympow":
        return {
            "gate_logits": rng.standard_normal((*batch, T)),
            "rotary_logits": rng.standard_normal((*batch, T)),
            "max_length": int(T),
        }
    if name == "leapformer":

        def net() -> ProportionNet:
            h = d
            return ProportionNet(
                w1=rng.standard_normal((d, h)) * d**-0.5,
                b1=rng.standard_normal(h) * 0.1,
                w2=rng.standard_normal((h, 1)) * h**-0.5,
                b2=rng.standard_normal(1) * 0.1,
            )

        return {"proportion_net": (net(), net()), "denominator_floor": 0.1}
    if name == "rebased":
        return {
            "gamma": 1.0 + 0.1 * rng.standard_normal((*batch, d)),
            "beta": 0.1 * rng.standard_normal((*batch, d)),
        }
    return {}
