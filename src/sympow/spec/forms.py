"""The three forms of math.md section 6, all computing the same function.

- parallel: the masked, weighted T x T score matrix (``steps.attend``), in blocks of query rows so that
  memory stays O(T * rows); the initial state is queried, and the final state built, as one chunk.
- recurrent: S <- gamma_t S + phi(k~_t) v_t^T, z <- gamma_t z + phi(k~_t), y_t = phi(q~_t)^T S / (...),
  token by token, the state kept as exp(M) SZ with M <- max(M + g_t, lam_t); token t's own term is
  taken from its score.
- chunked(C): the four steps of ``steps`` over chunks of C tokens (the last may be shorter).

``choose_form`` is the FLOP model of section 6: parallel costs about T (d+e) per token, chunked about
C (d+e) + 4 D' e, so chunked wins once T > 4 D' e / (d+e) + C.
"""

from __future__ import annotations

import math
from typing import Any

from array_api_compat import device

from .features import scaled
from .prepare import Prepared, unpack_state
from .state import State
from .steps import attend, chunk_states, finish, finite_or_zero, merge, query_states, scan_states
from .weights import prefix_sums, segment_sums, suffix_sums

ROW_BLOCK_ELEMENTS = 1 << 22  # score-matrix entries per batch entry in one block of the parallel form
Result = tuple[Any, State | None]


def choose_form(T: int, d: int, e: int, feature_size: int, chunk_size: int) -> str:
    """'chunked' once T exceeds 4 D' e / (d + e) + C, else 'parallel'."""
    return "chunked" if T > 4 * feature_size * e / (d + e) + chunk_size else "parallel"


def _gates(p: Prepared) -> Any:
    if p.g is not None:
        return p.g
    return p.xp.zeros(p.yq.shape[:-1], dtype=p.yq.dtype, device=device(p.yq))


def _proportion_matrix(a: Any, b: Any, xp: Any) -> Any:
    """cos(pi/2 (a_i - b_j)) [..., R, K] from a [..., R] and b [..., K]."""
    return xp.cos((math.pi / 2) * (a[..., :, None] - b[..., None, :]))


def _rows(x: Any, r0: int, r1: int) -> Any:
    return None if x is None else x[..., r0:r1, :]


def _final_state(p: Prepared, g: Any, k_features: Any, k_lam: Any) -> State:
    """The initial state decayed by every gate, plus the whole sequence as one chunk."""
    xp = p.xp
    g = p.for_state(g)
    states, scales = chunk_states(
        k_features, k_lam, suffix_sums(g, xp), p.for_state(p.v), p.for_state(p.key_weight), xp
    )
    total = xp.sum(g, axis=-1)
    _, _, final, final_scale = scan_states(
        states[..., None, :, :], scales[..., None], total[..., None], p.initial, p.initial_scale, xp
    )
    return unpack_state(final, final_scale, p)


def parallel(p: Prepared, return_state: bool) -> Result:
    xp, T = p.xp, p.T
    g = _gates(p)
    rows = max(1, min(T, ROW_BLOCK_ELEMENTS // T))
    if p.resumed:
        q_features, q_lam = scaled(p.kernel, p.for_state(p.yq), xp)
        from_start = prefix_sums(p.for_state(g), xp)
        query_weight = p.for_state(p.query_weight)
    outputs = []
    for r0 in range(0, T, rows):
        r1 = min(T, r0 + rows)
        log_weight = segment_sums(g[..., r0:r1], xp)
        if r0 > 0:  # keys before the block: sum_{l=r0..i} g_l + sum_{l=j+1..r0-1} g_l, each direct
            into_block = prefix_sums(g[..., r0:r1], xp)
            before = suffix_sums(g[..., :r0], xp)
            earlier = into_block[..., :, None] + before[..., None, :]
            log_weight = xp.concat([earlier, log_weight], axis=-1)
        weight = None if p.a is None else _proportion_matrix(p.a[..., r0:r1], p.b[..., :r1], xp)
        partial = attend(
            p.kernel,
            p.yq[..., r0:r1, :],
            p.yk[..., :r1, :],
            p.v[..., :r1, :],
            log_weight,
            weight,
            xp,
        )
        if p.resumed:
            from_state = query_states(
                q_features[..., r0:r1, :], q_lam[..., r0:r1], from_start[..., r0:r1], p.initial,
                p.initial_scale, _rows(query_weight, r0, r1), p.e, xp,
            )  # fmt: skip
            partial = merge(partial, p.back(from_state), xp)
        outputs.append(finish(partial, p.normalize, p.eps, xp))
    y = outputs[0] if len(outputs) == 1 else xp.concat(outputs, axis=-2)
    if not return_state:
        return y, None
    return y, _final_state(p, g, *scaled(p.kernel, p.for_state(p.yk), xp))


def recurrent(p: Prepared, return_state: bool) -> Result:
    """Token by token: y_t from the state after t-1 (decayed by g_t) plus token t's own term, the
    latter from its score kappa(s_tt) as inside a chunk, which is better conditioned in float32 than
    phi(q~_t).phi(k~_t) for high powers; then S <- gamma_t S + phi(k~_t) v_t^T."""
    xp, e = p.xp, p.e
    g = _gates(p)
    g_state, query_weight = p.for_state(g), p.for_state(p.query_weight)
    q_features, q_lam = scaled(p.kernel, p.for_state(p.yq), xp)
    k_features, k_lam = scaled(p.kernel, p.for_state(p.yk), xp)
    v = p.for_state(p.v)
    values = xp.concat([v, xp.ones_like(v[..., :1])], axis=-1)  # (v_t | 1)
    if p.key_weight is not None:
        key_weight = p.for_state(p.key_weight)
        values = xp.concat([values * key_weight[..., h : h + 1] for h in range(p.halves)], axis=-1)
    own_weight = None
    if p.a is not None:
        own_weight = xp.cos((math.pi / 2) * (p.a - p.b))[..., None, None]
    no_decay = xp.zeros_like(p.yq[..., :1, :1])
    state, scale = p.initial, p.initial_scale
    outputs = []
    for t in range(p.T):
        decayed = scale + g_state[..., t]
        token = slice(t, t + 1)
        own = attend(
            p.kernel, p.yq[..., token, :], p.yk[..., token, :], p.v[..., token, :], no_decay,
            None if own_weight is None else own_weight[..., t, :, :], xp,
        )  # fmt: skip
        past = query_states(
            q_features[..., token, :], q_lam[..., token], g_state[..., token], state, scale,
            _rows(query_weight, t, t + 1), e, xp,
        )  # fmt: skip
        outputs.append(finish(merge(own, p.back(past), xp), p.normalize, p.eps, xp))
        new_scale = xp.maximum(decayed, k_lam[..., t])
        reference = finite_or_zero(new_scale, xp)
        update = k_features[..., t, :, None] * values[..., t, None, :]
        state = (
            xp.exp(decayed - reference)[..., None, None] * state
            + xp.exp(k_lam[..., t] - reference)[..., None, None] * update
        )
        scale = new_scale
    y = xp.concat(outputs, axis=-2)
    return y, unpack_state(state, scale, p) if return_state else None


def _chunk(x: Any, n: int, size: int, xp: Any, fill: float = 0.0, tail: int = 0) -> Any:
    """[..., T, *rest] -> [..., n, size, *rest], padding T up to n * size with ``fill``."""
    T = x.shape[x.ndim - 1 - tail]
    if n * size > T:
        pad_shape = (*x.shape[: x.ndim - 1 - tail], n * size - T, *x.shape[x.ndim - tail :])
        pad = xp.full(pad_shape, fill, dtype=x.dtype, device=device(x))
        x = xp.concat([x, pad], axis=x.ndim - 1 - tail)
    lead = x.shape[: x.ndim - 1 - tail]
    return xp.reshape(x, (*lead, n, size, *x.shape[x.ndim - tail :]))


def chunked(p: Prepared, return_state: bool) -> Result:
    xp, T, e = p.xp, p.T, p.e
    size = min(p.chunk_size, T)
    n = -(-T // size)
    g = _chunk(_gates(p), n, size, xp)
    yq, yk, v = (_chunk(x, n, size, xp, tail=1) for x in (p.yq, p.yk, p.v))
    query_weight = None if p.query_weight is None else _chunk(p.query_weight, n, size, xp, tail=1)
    key_weight = None if p.key_weight is None else _chunk(p.key_weight, n, size, xp, tail=1)

    # 1. intra-chunk attention
    weight = None
    if p.a is not None:
        a, b = _chunk(p.a, n, size, xp), _chunk(p.b, n, size, xp)
        weight = _proportion_matrix(a, b, xp)
    intra = attend(p.kernel, yq, yk, v, segment_sums(g, xp), weight, xp)
    # 2. chunk states; padding keys (past T) get weight exp(-inf) = 0
    g = p.for_state(g)
    k_features, k_lam = scaled(p.kernel, p.for_state(yk), xp)
    valid = xp.arange(n * size, device=device(g)) < T
    to_end = xp.where(xp.reshape(valid, (n, size)), suffix_sums(g, xp), xp.full_like(g, -math.inf))
    states, scales = chunk_states(k_features, k_lam, to_end, p.for_state(v), p.for_state(key_weight), xp)
    # 3. discounted scan across chunks
    entering, entering_scale, final, final_scale = scan_states(
        states, scales, xp.sum(g, axis=-1), p.initial, p.initial_scale, xp
    )
    # 4. query of the state entering each chunk
    q_features, q_lam = scaled(p.kernel, p.for_state(yq), xp)
    inter = query_states(
        q_features, q_lam, prefix_sums(g, xp), entering, entering_scale,
        p.for_state(query_weight), e, xp,
    )  # fmt: skip
    y = finish(merge(intra, p.back(inter), xp), p.normalize, p.eps, xp)
    y = xp.reshape(y, (*y.shape[:-3], n * size, e))[..., :T, :]
    return y, unpack_state(final, final_scale, p) if return_state else None


FORMS = {"parallel": parallel, "recurrent": recurrent, "chunked": chunked}
