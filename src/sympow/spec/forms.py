"""The three forms of math.md section 6, all computing the same function.

- parallel: the masked, weighted T x T score matrix (``steps.attend``), in blocks of query rows so that
  memory stays O(T * rows); the initial state is queried, and the final state built, as one chunk.
- recurrent: S <- gamma_t S + phi(k~_t) v_t^T, z <- gamma_t z + phi(k~_t), y_t = phi(q~_t)^T S / (...),
  token by token, the state kept as exp(M) SZ with M <- max(M + g_t, lam_t); token t's own term is
  taken from its score.
- chunked(C): chunks of C tokens (the last may be shorter). Step 1 of ``steps`` (the intra-chunk
  attention) for every chunk at once; steps 2-4 (chunk state, scan, query of the entering state) fused,
  one chunk at a time, with the features of one chunk only, built in row blocks (``feature_blocks``).
  So memory is O(T C + D e) per batch entry, and no T x D feature array or stack of states exists.
  Without gates, and when every chunk's scale lies within ``FIXED_SPREAD`` of the largest, one reference
  serves every chunk and the state is never rescaled (``_fixed_reference``).

The loops over tokens and chunks are the executor's ``p.scan`` (``executor.py``): a Python loop, or
``lax.scan`` on JAX, over one step function written here once.

``choose_form`` is the FLOP model of section 6: parallel costs about T (d+e) per token, chunked about
C (d+e) + 4 D' e, so chunked wins once T > 4 D' e / (d+e) + C.
"""

from __future__ import annotations

import math
from typing import Any

from array_api_compat import device

from .concrete import is_concrete
from .feature_blocks import build, inverse_order, layout, scaled_units
from .features import scaled
from .prepare import Prepared, unpack_state
from .state import State
from .steps import (
    Element,
    attend,
    chunk_states,
    extend,
    finish,
    finite_or_zero,
    merge,
    query_sums,
)
from .weights import causal_mask, prefix_sums, segment_sums, suffix_sums

ROW_BLOCK_ELEMENTS = 1 << 22  # score-matrix entries per batch entry in one block of the parallel form
PACKED_ROW_BLOCK = 128  # query rows per block of the parallel form on packed sequences
Result = tuple[Any, State | None]  # (y, or the partial (num, den, m) when not ``finished``; State or None)


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
    """The whole call as one block of keys (step 2), added to the resumed state decayed by every gate
    (step 3, ``extend``) where there is one."""
    xp = p.xp
    g = p.for_state(g)
    decayed = None
    if p.resumed:
        decayed = Element(None, p.initial_scale + xp.sum(g, axis=-1), p.initial_S, p.initial_z)
    keys = chunk_states(
        k_features, k_lam, suffix_sums(g, xp), p.for_state(p.v), p.for_state(p.key_weight), xp,
        None if decayed is None else decayed.M,
    )  # fmt: skip
    final = keys if decayed is None else extend(decayed, keys, xp)
    return p.state_class(S=final.S, z=final.z, mu=p.mu_end, log_scale=final.M)


def query_rows(p: Prepared, r0: int, r1: int) -> tuple[Any, Any, Any]:
    """The partial (num, den, m) of queries r0..r1-1 against the resumed state, which enters before
    token 0 (decayed by the gates up to each query), in the scores' dtype."""
    xp = p.xp
    direction = (p.q_dir[0][..., r0:r1, :], p.q_dir[1][..., r0:r1])
    q_features, q_lam = scaled(p.kernel, None, xp, p.state_direction(direction))
    from_start = prefix_sums(p.for_state(_gates(p)), xp)[..., r0:r1]
    query_weight = _rows(p.for_state(p.query_weight), r0, r1)
    resumed = Element(None, p.initial_scale, p.initial_S, p.initial_z)
    return p.back(query_sums(q_features, q_lam, from_start, resumed, query_weight, xp))


def output(partial: tuple[Any, Any, Any], p: Prepared, finished: bool) -> Any:
    """y from a partial (num, den, m), or the partial itself when not ``finished``."""
    return finish(partial, p.normalize, p.eps, p.xp) if finished else partial


def _concat_rows(outputs: list[Any], xp: Any) -> Any:
    """Row blocks of y, or of partials (num, den, m), joined along the token axis."""
    if len(outputs) == 1:
        return outputs[0]
    if isinstance(outputs[0], tuple):
        columns = zip(*outputs, strict=True)
        return tuple(xp.concat(list(parts), axis=-2 if i == 0 else -1) for i, parts in enumerate(columns))
    return xp.concat(outputs, axis=-2)


def _key_start(starts: tuple[int, ...] | None, r0: int) -> int:
    """The first key that a query of row r0 or later can see: 0, or with packed sequences whose offsets
    can be read (``Prepared.starts``), the start of the sequence holding token r0 (keys before it lie
    behind a boundary, where every weight is 0)."""
    if starts is None:
        return 0
    low, high = 0, len(starts)  # the last start <= r0, by bisection written out (torch.compile traces it;
    while high - low > 1:  # it does not trace the C ``bisect``); starts[0] = 0 <= r0
        middle = (low + high) // 2
        low, high = (middle, high) if starts[middle] <= r0 else (low, middle)
    return starts[low]


def _row_block(starts: tuple[int, ...] | None, T: int) -> int:
    """Query rows per block: ``ROW_BLOCK_ELEMENTS`` score entries; with readable packed offsets at most
    ``PACKED_ROW_BLOCK``, so that each block reaches back only to its own sequences' starts."""
    if starts is None:
        return max(1, min(T, ROW_BLOCK_ELEMENTS // T))
    longest = max(b - a for a, b in zip(starts, (*starts[1:], T), strict=True))
    return max(1, min(T, PACKED_ROW_BLOCK, ROW_BLOCK_ELEMENTS // max(1, longest)))


def choose_packed_form(
    starts: tuple[int, ...], T: int, d: int, e: int, feature_size: int, chunk_size: int
) -> str:
    """The FLOP model of ``choose_form`` for packed sequences whose offsets can be read: the parallel
    form costs (d + e) per score entry it builds (each row block against the keys from its first
    sequence's start), the chunked form T (C (d + e) + 4 D' e)."""
    rows = _row_block(starts, T)
    entries = sum((min(T, r0 + rows) - r0) * (min(T, r0 + rows) - _key_start(starts, r0))
                  for r0 in range(0, T, rows))  # fmt: skip
    chunked = T * (min(chunk_size, T) * (d + e) + 4 * feature_size * e)
    return "parallel" if entries * (d + e) <= chunked else "chunked"


def parallel(p: Prepared, return_state: bool, finished: bool = True) -> Result:
    """The masked, weighted score matrix in blocks of query rows, each against the keys from
    ``_key_start`` to its last row."""
    xp, T = p.xp, p.T
    g = _gates(p)
    rows = _row_block(p.starts, T)
    outputs = []
    for r0 in range(0, T, rows):
        r1 = min(T, r0 + rows)
        k0 = _key_start(p.starts, r0)
        log_weight = segment_sums(g[..., r0:r1], xp)
        if r0 > k0:  # keys before the block: sum_{l=r0..i} g_l + sum_{l=j+1..r0-1} g_l, each direct
            into_block = prefix_sums(g[..., r0:r1], xp)
            before = suffix_sums(g[..., k0:r0], xp)
            earlier = into_block[..., :, None] + before[..., None, :]
            log_weight = xp.concat([earlier, log_weight], axis=-1)
        weight = None if p.a is None else _proportion_matrix(p.a[..., r0:r1], p.b[..., k0:r1], xp)
        query = (p.q_dir[0][..., r0:r1, :], p.q_dir[1][..., r0:r1])
        key = (p.k_dir[0][..., k0:r1, :], p.k_dir[1][..., k0:r1])
        partial = attend(p.kernel, query, key, p.v[..., k0:r1, :], log_weight, weight, xp)
        if p.resumed:
            partial = merge(partial, query_rows(p, r0, r1), xp)
        outputs.append(output(partial, p, finished))
    y = _concat_rows(outputs, xp)
    if not return_state:
        return y, None
    return y, _final_state(p, g, *scaled(p.kernel, None, xp, p.state_direction(p.k_dir)))


def recurrent(p: Prepared, return_state: bool, finished: bool = True) -> Result:
    """Token by token: y_t from the state after t-1 (decayed by g_t) plus token t's own term, the
    latter from its score kappa(s_tt) as inside a chunk, which is better conditioned in float32 than
    phi(q~_t).phi(k~_t) for high powers; then S <- gamma_t S + phi(k~_t) v_t^T. One ``p.scan`` over
    tokens carries (SZ, M)."""
    xp, e = p.xp, p.e
    g = p.for_state(_gates(p))
    q_features, q_lam = scaled(p.kernel, None, xp, p.state_direction(p.q_dir))
    k_features, k_lam = scaled(p.kernel, None, xp, p.state_direction(p.k_dir))
    v = p.for_state(p.v)
    values = xp.concat([v, xp.ones_like(v[..., :1])], axis=-1)  # (v_t | 1)
    if p.key_weight is not None:
        key_weight = p.for_state(p.key_weight)
        values = xp.concat([values * key_weight[..., h : h + 1] for h in range(p.halves)], axis=-1)
    own_weight = None
    if p.a is not None:
        own_weight = xp.cos((math.pi / 2) * (p.a - p.b))[..., None, None]
    query, key = ((u[..., None, :], log[..., None]) for u, log in (p.q_dir, p.k_dir))
    own = attend(p.kernel, query, key, p.v[..., None, :], xp.zeros_like(p.v[..., None, :1]), own_weight, xp)
    own = (own[0][..., 0, :], own[1][..., 0], own[2][..., 0])

    def step(carry: tuple[Any, Any], x: tuple[Any, ...]) -> tuple[tuple[Any, Any], tuple[Any, ...]]:
        state, scale = carry
        fq, fk, lk, values_t, g_t = x
        product = (fq[..., None, :] @ state)[..., 0, :]
        decayed = scale + g_t
        new_scale = xp.maximum(decayed, lk)
        reference = finite_or_zero(new_scale, xp)
        update = fk[..., :, None] * values_t[..., None, :]
        state = (
            xp.exp(decayed - reference)[..., None, None] * state
            + xp.exp(lk - reference)[..., None, None] * update
        )
        return (state, new_scale), (product, scale)

    pairs = ((q_features, -2), (k_features, -2), (k_lam, -1), (values, -2), (g, -1))
    tokens = tuple(_leading(x, axis, xp) for x, axis in pairs)
    (state, scale), (products, scales) = p.scan(step, (p.initial, p.initial_scale), tokens)
    product = xp.moveaxis(products, 0, -2)
    if p.query_weight is not None:
        product = xp.reshape(product, (*product.shape[:-1], p.halves, e + 1))
        product = xp.sum(product * p.for_state(p.query_weight)[..., None], axis=-2)
    past = (product[..., :e], product[..., e], q_lam + g + xp.moveaxis(scales, 0, -1))
    y = output(merge(own, p.back(past), xp), p, finished)
    return y, unpack_state(state, scale, p) if return_state else None


def _leading(x: Any, axis: int, xp: Any) -> Any:
    """x with ``axis`` moved first, the axis a scan runs along (None stays None)."""
    return None if x is None else xp.moveaxis(x, axis, 0)


def _chunk(x: Any, n: int, size: int, xp: Any, fill: float = 0.0, tail: int = 0) -> Any:
    """[..., T, *rest] -> [..., n, size, *rest], padding T up to n * size with ``fill``."""
    T = x.shape[x.ndim - 1 - tail]
    if n * size > T:
        pad_shape = (*x.shape[: x.ndim - 1 - tail], n * size - T, *x.shape[x.ndim - tail :])
        pad = xp.full(pad_shape, fill, dtype=x.dtype, device=device(x))
        x = xp.concat([x, pad], axis=x.ndim - 1 - tail)
    lead = x.shape[: x.ndim - 1 - tail]
    return xp.reshape(x, (*lead, n, size, *x.shape[x.ndim - tail :]))


def chunked(p: Prepared, return_state: bool, finished: bool = True) -> Result:
    xp, T = p.xp, p.T
    size = min(p.chunk_size, T)
    n = -(-T // size)
    g = None if p.g is None else _chunk(p.g, n, size, xp)
    v = _chunk(p.v, n, size, xp, tail=1)
    # padding tokens are zero vectors: u = 0, log norm -inf
    q_dir, k_dir = (
        (_chunk(u, n, size, xp, tail=1), _chunk(log, n, size, xp, fill=-math.inf))
        for u, log in (p.q_dir, p.k_dir)
    )

    # 1. intra-chunk attention, every chunk at once
    weight = None
    if p.a is not None:
        weight = _proportion_matrix(_chunk(p.a, n, size, xp), _chunk(p.b, n, size, xp), xp)
    log_weight = causal_mask(size, v.dtype, device(v), xp) if g is None else segment_sums(g, xp)
    intra = attend(p.kernel, q_dir, k_dir, v, log_weight, weight, xp)
    # 2-4. the state path, chunk by chunk
    inter, final, final_scale = _chunk_by_chunk(p, n, size, g, q_dir, k_dir, v)
    num, den, m = merge(intra, p.back(inter), xp)
    lead = num.shape[:-3]
    partial = (
        xp.reshape(num, (*lead, n * size, p.e))[..., :T, :],
        xp.reshape(den, (*lead, n * size))[..., :T],
        xp.reshape(m, (*lead, n * size))[..., :T],
    )
    return output(partial, p, finished), unpack_state(final, final_scale, p) if return_state else None


def _chunk_by_chunk(
    p: Prepared, n: int, size: int, g: Any, q_dir: tuple[Any, Any], k_dir: tuple[Any, Any], v: Any
) -> tuple[Any, Any, Any]:
    """Steps 2-4 of ``steps`` fused, one chunk at a time (one ``p.scan`` over chunks): query the state
    entering the chunk, then add the chunk's keys. The state is held as row blocks (``feature_blocks``),
    each updated by
    S_l <- exp(M + g_chunk - M') S_l + f_l(K_c)^T (exp(lam + G_to_end - M') [V_c | 1]),
    M' = max(M + g_chunk, max_j (lam_j + G_j->end)), so only one chunk's features exist at a time.

    q_dir, k_dir: directions (u [B, n, C, d], log norm [B, n, C]); v [B, n, C, e]; g [B, n, C] or None.
    Returns the inter-chunk partial (num [B, n, C, e], den [B, n, C], m [B, n, C]) and the final (SZ in table
    order, log scale).
    """
    xp, e, kernel, dev = p.xp, p.e, p.kernel, device(v)
    d = q_dir[0].shape[-1]
    blocks = layout(d, kernel.degrees)
    q_units, q_constant, q_lam = scaled_units(kernel, p.state_direction(q_dir), xp)
    k_units, k_constant, k_lam = scaled_units(kernel, p.state_direction(k_dir), xp)
    valid = xp.reshape(xp.arange(n * size, device=dev) < p.T, (n, size))
    if g is None:
        to_end = xp.where(valid, xp.zeros_like(k_lam), xp.full_like(k_lam, -math.inf))
        q_log, totals = q_lam, None
    else:
        g = p.for_state(g)
        to_end = xp.where(valid, suffix_sums(g, xp), xp.full_like(g, -math.inf))
        q_log, totals = q_lam + prefix_sums(g, xp), xp.sum(g, axis=-1)
    k_log = k_lam + to_end
    values = p.for_state(v)
    values = xp.concat([values, xp.ones_like(values[..., :1])], axis=-1)  # (v_j | 1)
    if p.key_weight is not None:
        key_weight = p.for_state(_chunk(p.key_weight, n, size, xp, tail=1))
        values = xp.concat([values * key_weight[..., h : h + 1] for h in range(p.halves)], axis=-1)
    query_weight = (
        None if p.query_weight is None else p.for_state(_chunk(p.query_weight, n, size, xp, tail=1))
    )
    # each chunk's keys weighted against the chunk's largest log-weight; the running scale is applied
    # per chunk below, as one number per batch entry
    chunk_max = xp.max(k_log, axis=-1)
    values = values * xp.exp(k_log - finite_or_zero(chunk_max, xp)[..., None])[..., None]

    degrees = tuple(q_units)
    halves = p.halves

    def features(units: tuple[Any, ...], constant: Any) -> list[Any]:
        return build(blocks, dict(zip(degrees, units, strict=True)), constant, xp)

    def step(carry: tuple[tuple[Any, ...], Any], x: tuple[Any, ...]) -> tuple[Any, tuple[Any, ...]]:
        state, scale = carry
        q_u, k_u = x[: len(degrees)], x[len(degrees) : 2 * len(degrees)]
        q_c, k_c, weighted, top, total, weight = x[2 * len(degrees) :]
        product = query(state, features(q_u, q_c), weight)
        decayed = scale if total is None else scale + total
        new_scale = xp.maximum(decayed, top)
        reference = finite_or_zero(new_scale, xp)
        weighted = weighted * xp.exp(top - reference)[..., None, None]
        keep = xp.exp(decayed - reference)[..., None, None]
        state = tuple(keep * s + f @ weighted for f, s in zip(features(k_u, k_c), state, strict=True))
        return (state, new_scale), (product[..., :e], product[..., e], scale)

    def query(state: tuple[Any, ...], q_features: list[Any], weight: Any) -> Any:
        return _query_blocks(state, q_features, weight, halves, e, xp)

    def fixed_step(state: tuple[Any, ...], x: tuple[Any, ...]) -> tuple[Any, tuple[Any, ...]]:
        q_u, k_u = x[: len(degrees)], x[len(degrees) : 2 * len(degrees)]
        q_c, k_c, weighted, weight = x[2 * len(degrees) :]
        product = query(state, features(q_u, q_c), weight)
        state = tuple(s + f @ weighted for f, s in zip(features(k_u, k_c), state, strict=True))
        return state, (product[..., :e], product[..., e])

    tokens_last = [xp.matrix_transpose(q_units[n]) for n in degrees]  # [B, n, d, C]: tokens last
    tokens_last += [xp.matrix_transpose(k_units[n]) for n in degrees]
    constants = [None if c is None else c[..., None, :] for c in (q_constant, k_constant)]
    xs = tuple(_leading(x, -3, xp) for x in (*tokens_last, *constants))
    state = tuple(xp.take(p.initial, xp.asarray(block.rows, device=dev), axis=-2) for block in blocks)
    weights = _leading(query_weight, -3, xp)
    fixed = _fixed_reference(chunk_max, totals, p.initial_scale, xp)
    if fixed is None:
        xs += (_leading(values, -3, xp), _leading(chunk_max, -1, xp), _leading(totals, -1, xp), weights)
        (state, scale), (nums, dens, entering) = p.scan(step, (state, p.initial_scale), xs)
        entering = xp.moveaxis(entering, 0, -1)
    else:
        # every chunk against one reference: no rescaling of the state from chunk to chunk
        values = values * xp.exp(chunk_max - fixed[..., None])[..., None, None]
        keep = xp.exp(p.initial_scale - fixed)[..., None, None]
        state = tuple(keep * s for s in state)
        state, (nums, dens) = p.scan(fixed_step, state, (*xs, _leading(values, -3, xp), weights))
        scale = xp.where(xp.isfinite(p.initial_scale) | xp.any(xp.isfinite(chunk_max), axis=-1),
                         fixed, xp.full_like(fixed, -math.inf))  # fmt: skip
        entering = _entering_fixed(fixed, chunk_max, p.initial_scale, xp)
    m = q_log + entering[..., None]
    inter = (xp.moveaxis(nums, 0, -3), xp.moveaxis(dens, 0, -2), m)
    order = xp.asarray(inverse_order(d, kernel.degrees), device=dev)
    final = xp.take(xp.concat(state, axis=-2), order, axis=-2)
    return inter, final, scale


def _query_blocks(
    state: tuple[Any, ...], q_features: list[Any], weight: Any, halves: int, e: int, xp: Any
) -> Any:
    """sum_l f_l^T S_l [..., C, H*(e+1)] over the row blocks, each half weighted by the queries' weight
    [..., C, H] (or None), giving [..., C, e+1]."""
    product = xp.matrix_transpose(q_features[0]) @ state[0]
    for f, s in zip(q_features[1:], state[1:], strict=True):
        product = product + xp.matrix_transpose(f) @ s
    if weight is not None:
        product = xp.reshape(product, (*product.shape[:-1], halves, e + 1))
        product = xp.sum(product * weight[..., None], axis=-2)
    return product


def query_by_chunks(p: Prepared, state: Any, scale: Any) -> tuple[Any, Any, Any]:
    """The partial (num [B, T, e], den [B, T], m [B, T]) of every query against a state SZ [B, D, H*(e+1)]
    of log scale [B] that enters before token 0, decayed by the gates up to each query: step 4 of
    ``steps`` one chunk of queries at a time (one ``p.scan``), so that only one chunk's features exist
    (memory O(C D), as in the chunked form), in the scores' dtype."""
    xp, T, e, kernel = p.xp, p.T, p.e, p.kernel
    size = min(p.chunk_size, T)
    n = -(-T // size)
    d = p.q_dir[0].shape[-1]
    direction = (_chunk(p.q_dir[0], n, size, xp, tail=1), _chunk(p.q_dir[1], n, size, xp, fill=-math.inf))
    units, constant, lam = scaled_units(kernel, p.state_direction(direction), xp)
    from_start = _chunk(prefix_sums(p.for_state(_gates(p)), xp), n, size, xp)
    weight = None if p.query_weight is None else p.for_state(_chunk(p.query_weight, n, size, xp, tail=1))
    blocks = layout(d, kernel.degrees)
    rows = tuple(xp.take(state, xp.asarray(block.rows, device=device(state)), axis=-2) for block in blocks)
    degrees = tuple(units)

    def step(carry: tuple[()], x: tuple[Any, ...]) -> tuple[tuple[()], tuple[Any, ...]]:
        features = build(blocks, dict(zip(degrees, x[: len(degrees)], strict=True)), x[-2], xp)
        return carry, (_query_blocks(rows, features, x[-1], p.halves, e, xp),)

    xs = [_leading(xp.matrix_transpose(units[m]), -3, xp) for m in degrees]
    xs += [None if constant is None else _leading(constant[..., None, :], -3, xp), _leading(weight, -3, xp)]
    _, (products,) = p.scan(step, (), tuple(xs))
    product = xp.moveaxis(products, 0, -3)  # [B, n, C, e+1]
    m = lam + from_start + scale[..., None, None]
    lead = product.shape[:-3]
    partial = (
        xp.reshape(product[..., :e], (*lead, n * size, e))[..., :T, :],
        xp.reshape(product[..., e], (*lead, n * size))[..., :T],
        xp.reshape(m, (*lead, n * size))[..., :T],
    )
    return p.back(partial)


FIXED_SPREAD = 20.0  # nats: the widest spread of chunk scales that one reference holds without loss


def _fixed_reference(chunk_max: Any, totals: Any, initial_scale: Any, xp: Any) -> Any:
    """One reference R [B] for every chunk, or None.

    Without gates the running scale M of the state only grows, to the largest chunk maximum so far; when
    every chunk's maximum (and the initial state's scale) lies within ``FIXED_SPREAD`` of the largest, R =
    that largest one serves every chunk: each chunk's update is scaled by exp(chunk_max - R) >= e^-20 (no
    precision lost in float32 or float64) and the state is never rescaled. Decided once per call, so only
    where the values can be read (not under jit or torch.compile, which take the general path)."""
    if totals is not None or not is_concrete(chunk_max):
        return None
    levels = xp.concat([chunk_max, initial_scale[..., None]], axis=-1)
    top = xp.max(levels, axis=-1)
    low = xp.min(xp.where(xp.isfinite(levels), levels, xp.full_like(levels, math.inf)), axis=-1)
    narrow = ~xp.isfinite(top) | (top - low <= FIXED_SPREAD)
    return finite_or_zero(top, xp) if bool(xp.all(narrow)) else None


def _entering_fixed(fixed: Any, chunk_max: Any, initial_scale: Any, xp: Any) -> Any:
    """[B, n]: the scale of the state entering each chunk under one reference: R once anything has
    entered the state (the initial state, or a key of an earlier chunk), -inf before (an empty state
    must not pose as one of scale R)."""
    filled = xp.astype(xp.isfinite(chunk_max), xp.int32)
    before = xp.cumulative_sum(filled, axis=-1) - filled  # keys of earlier chunks
    seen = (before > 0) | xp.isfinite(initial_scale)[..., None]
    return xp.where(seen, fixed[..., None], xp.full_like(chunk_max, -math.inf))


FORMS = {"parallel": parallel, "recurrent": recurrent, "chunked": chunked}
