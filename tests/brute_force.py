"""The float64 reference: a double loop over (i, j) written straight from the maths.

    s_ij = sigma <q~_i, k~_j>,  sigma = scale (default d ** -0.5)
    kappa_ij: sympow s^p | taylor sum_{n<=p} s^n / n! | identity s
              relu sigma <relu q~_i, relu k~_j>
    w_ij = exp(sum_{l=j+1..i} g_l) * cos(pi/2 (a_i - b_j))              (causal: j <= i)
    mu_t = mu_0 + sum_{l<=t} w_l,   q~_t = R(mu_t) q_t,   k~_t = R(mu_t) k_t
    N_i = sum_{j<=i} w_ij kappa_ij v_j,   Z_i = sum_{j<=i} w_ij kappa_ij
    y_i = N_i / (Z_i + eps) (0 where Z_i + eps == 0) if normalize else N_i

Deliberately slow, O(T^2 d) Python: keep T small (<= 64) where it is used. ``dense_brute_force``
computes the same definition with whole-array NumPy operations (the T x T matrix of w_ij kappa_ij, each
log-weight a running sum of its own gates), for longer sequences; it shares no code with the library's
forms (no feature maps, no log-space scales, no blocks or chunks), so it is an independent float64
reference, and tests/spec/test_forms.py holds it to the double loop.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from sympow.testing import to_numpy


def rotate_pairs(x: np.ndarray, mu: np.ndarray, layout: str) -> np.ndarray:
    """R(mu) x for one token: x [d], mu [d/2]."""
    d = x.shape[0]
    half = d // 2
    out = np.array(x, dtype=np.float64)
    for m in range(half):
        if layout == "half":
            a, b = m, m + half
        elif layout == "interleaved":
            a, b = 2 * m, 2 * m + 1
        else:
            raise ValueError(f"unknown rotary_layout {layout!r}")
        c, s = math.cos(mu[m]), math.sin(mu[m])
        out[a] = x[a] * c - x[b] * s
        out[b] = x[a] * s + x[b] * c
    return out


def kernel_value(qi: np.ndarray, kj: np.ndarray, kernel: str, power: int, sigma: float) -> float:
    """kappa for one (query, key) pair of rotated vectors."""
    if kernel == "relu":
        return sigma * float(np.dot(np.maximum(qi, 0.0), np.maximum(kj, 0.0)))
    s = sigma * float(np.dot(qi, kj))
    if kernel == "sympow":
        return s**power
    if kernel == "taylor":
        return sum(s**n / math.factorial(n) for n in range(power + 1))
    if kernel == "identity":
        return s
    raise ValueError(f"unknown kernel {kernel!r}")


def _leading(x: np.ndarray | None, trailing: int) -> tuple[int, ...]:
    return () if x is None else x.shape[: x.ndim - trailing]


def brute_force(
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
    mu0: Any = None,
) -> np.ndarray:
    """y [*batch, T, e] in float64 from the definition; leading axes broadcast."""
    q, k, v = to_numpy(q), to_numpy(k), to_numpy(v)
    g = None if log_gate is None else to_numpy(log_gate)
    a = b = None
    if proportions is not None:
        a, b = to_numpy(proportions[0]), to_numpy(proportions[1])
    w = None if rotary is None else to_numpy(rotary)
    m0 = None if mu0 is None else to_numpy(mu0)
    T, d = q.shape[-2], q.shape[-1]
    e = v.shape[-1]
    sigma = d**-0.5 if scale is None else float(scale)
    batch = np.broadcast_shapes(
        _leading(q, 2),
        _leading(k, 2),
        _leading(v, 2),
        _leading(g, 1),
        _leading(a, 1),
        _leading(b, 1),
        _leading(w, 2),
        _leading(m0, 1),
    )

    def at(x: np.ndarray | None, trailing: int, idx: tuple[int, ...]) -> np.ndarray | None:
        if x is None:
            return None
        return np.broadcast_to(x, batch + x.shape[x.ndim - trailing :])[idx]

    y = np.zeros((*batch, T, e), dtype=np.float64)
    for idx in np.ndindex(*batch):
        qb, kb, vb = at(q, 2, idx), at(k, 2, idx), at(v, 2, idx)
        gb, ab, bb = at(g, 1, idx), at(a, 1, idx), at(b, 1, idx)
        wb, mb = at(w, 2, idx), at(m0, 1, idx)
        q_rot = [np.array(qb[t]) for t in range(T)]
        k_rot = [np.array(kb[t]) for t in range(T)]
        if wb is not None:
            mu = np.zeros(d // 2) if mb is None else np.array(mb, dtype=np.float64)
            for t in range(T):
                mu = mu + wb[t]
                q_rot[t] = rotate_pairs(qb[t], mu, rotary_layout)
                k_rot[t] = rotate_pairs(kb[t], mu, rotary_layout)
        for i in range(T):
            numerator = np.zeros(e)
            denominator = 0.0
            for j in range(i + 1):
                weight = 1.0
                if gb is not None:
                    weight *= math.exp(math.fsum(float(gb[l]) for l in range(j + 1, i + 1)))
                if ab is not None:
                    weight *= math.cos(math.pi / 2 * (float(ab[i]) - float(bb[j])))
                kappa = kernel_value(q_rot[i], k_rot[j], kernel, power, sigma)
                numerator = numerator + weight * kappa * vb[j]
                denominator += weight * kappa
            if not normalize:
                y[(*idx, i)] = numerator
            elif denominator + eps != 0:
                y[(*idx, i)] = numerator / (denominator + eps)
    return y


def reference(inputs: dict[str, Any], **kwargs: Any) -> np.ndarray:
    """brute_force on an input dict from ``sympow.testing.make_inputs`` (extra keys ignored)."""
    arrays = {key: inputs.get(key) for key in ("log_gate", "proportions", "rotary")}
    return brute_force(inputs["q"], inputs["k"], inputs["v"], **arrays, **kwargs)


def _rotate_all(x: np.ndarray, mu: np.ndarray, layout: str) -> np.ndarray:
    """R(mu_t) x_t for every token: x [..., T, d], mu [..., T, d/2]."""
    half = x.shape[-1] // 2
    if layout == "half":
        first, second = np.arange(half), np.arange(half) + half
    elif layout == "interleaved":
        first, second = 2 * np.arange(half), 2 * np.arange(half) + 1
    else:
        raise ValueError(f"unknown rotary_layout {layout!r}")
    c, s = np.cos(mu), np.sin(mu)
    out = np.array(x, dtype=np.float64)
    out[..., first] = x[..., first] * c - x[..., second] * s
    out[..., second] = x[..., first] * s + x[..., second] * c
    return out


def dense_brute_force(
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
    mu0: Any = None,
) -> np.ndarray:
    """``brute_force``'s y [*batch, T, e] in float64, as whole-array NumPy operations on [*batch, T, T]."""
    q, k, v = to_numpy(q), to_numpy(k), to_numpy(v)
    T, d = q.shape[-2], q.shape[-1]
    sigma = d**-0.5 if scale is None else float(scale)
    if rotary is not None:
        mu = np.cumsum(to_numpy(rotary), axis=-2)  # mu_t = mu_0 + sum_{l<=t} w_l
        if mu0 is not None:
            mu = mu + to_numpy(mu0)[..., None, :]
        q, k = _rotate_all(q, mu, rotary_layout), _rotate_all(k, mu, rotary_layout)
    if kernel == "relu":
        kappa = sigma * (np.maximum(q, 0.0) @ np.swapaxes(np.maximum(k, 0.0), -1, -2))
    else:
        s = sigma * (q @ np.swapaxes(k, -1, -2))
        if kernel == "sympow":
            kappa = s**power
        elif kernel == "taylor":
            kappa = sum(s**n / math.factorial(n) for n in range(power + 1))
        elif kernel == "identity":
            kappa = s
        else:
            raise ValueError(f"unknown kernel {kernel!r}")
    causal = np.tri(T, dtype=bool)  # [i, j]: j <= i
    weight = np.ones((T, T))
    if log_gate is not None:
        g = to_numpy(log_gate)
        # L[i, j] = sum_{l=j+1..i} g_l, summed from l = j + 1 on (a running sum per column j, not a
        # difference of prefix sums): the rows l of the masked matrix, accumulated down to row i
        after = np.tri(T, k=-1, dtype=bool)  # [l, j]: l > j
        steps = np.where(after, np.broadcast_to(g[..., :, None], (*g.shape, T)), 0.0)
        weight = weight * np.exp(np.cumsum(steps, axis=-2))
    if proportions is not None:
        a, b = to_numpy(proportions[0]), to_numpy(proportions[1])
        weight = weight * np.cos(math.pi / 2 * (a[..., :, None] - b[..., None, :]))
    A = np.where(causal, weight * kappa, 0.0)
    numerator = A @ v
    if not normalize:
        return numerator
    denominator = np.sum(A, axis=-1, keepdims=True) + eps
    out = np.zeros(np.broadcast_shapes(numerator.shape, denominator.shape))
    return np.divide(numerator, denominator, out=out, where=np.broadcast_to(denominator != 0, out.shape))


def dense_reference(inputs: dict[str, Any], **kwargs: Any) -> np.ndarray:
    """dense_brute_force on an input dict from ``sympow.testing.make_inputs`` (extra keys ignored)."""
    arrays = {key: inputs.get(key) for key in ("log_gate", "proportions", "rotary")}
    return dense_brute_force(inputs["q"], inputs["k"], inputs["v"], **arrays, **kwargs)
