"""Packed sequences (math.md 10): N sequences back to back along T, offsets ``cu_seqlens``.

The result equals N separate calls on the slices [o_n, o_{n+1}). It is computed in three parts, each
written once for every form:

1. The sequences share the form's blocks and chunks: a boundary is a gate of -inf at the first token of
   every sequence (no key before it reaches a query after it, in any form: w_ij = exp(sum_{l=j+1..i} g_l)
   = 0), and the rotary angle restarts there from the sequence's own entering angle
   (``rotary.restarted_angles``). The form runs from an empty state; its cost is that of one unpacked call
   of length T, whatever the number of sequences.
2. Where ``initial_state`` is given (one state per sequence, a leading axis of N), each token's query
   against its own sequence's initial state S0_n, discounted by sum_{l=o_n..i} g_l (the gates of the
   sequence's own tokens, the first one included, as in an unpacked call), is merged in.
3. Where the State is returned, the final state of each sequence: S0_n discounted by all its gates, plus
   sum_j exp(sum_{l=j+1..end} g_l) phi(k~_j) (v_j | 1) over its keys.

Parts 2 and 3 run over *pieces*: each sequence is cut into pieces of at most W tokens (W = the chunk
size, or the longest sequence where the offsets can be read and it is shorter), so there are at most
P = T // W + N pieces, each inside one sequence. One ``p.scan`` over pieces carries the running state of
the current sequence (restarted from S0_n at its first piece) and the gates summed since its start; a
piece costs O(W D' e), so parts 2 and 3 cost O((T + N W) D' e), and the per-piece states kept for part 3
take O(P D' e) memory. Nothing is computed for them when neither is asked for.

Static shapes: N is the length of ``cu_seqlens`` minus one; W and P are bounds from the shapes (tightened
when the offsets can be read), so the same code runs under ``jax.jit`` with traced offsets.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from array_api_compat import device

from .concrete import is_concrete
from .features import scaled
from .prepare import Prepared, prepare
from .steps import Element, chunk_states, extend, finish, merge, query_sums
from .weights import prefix_sums, suffix_sums


@dataclass(frozen=True)
class Segments:
    """Where the sequences lie. ``offsets`` [N + 1] (int64); per token ``sequence`` [T] (the sequence it
    belongs to) and ``starts`` [T] (whether it is its sequence's first); ``lengths`` [N]."""

    offsets: Any
    count: int
    sequence: Any
    starts: Any
    lengths: Any

    @property
    def ends(self) -> Any:
        return self.offsets[1:]


def segments(offsets: Any, T: int, xp: Any) -> Segments:
    """The token tables of offsets [N + 1] (validated: 0 = o_0 <= ... <= o_N = T, or traced)."""
    count = offsets.shape[0] - 1
    tokens = xp.arange(T, dtype=offsets.dtype, device=device(offsets))
    sequence = xp.searchsorted(offsets, tokens, side="right") - 1
    sequence = xp.clip(sequence, 0, count - 1)  # in range even for traced offsets that are invalid
    starts = xp.take(offsets, sequence) == tokens
    return Segments(offsets, count, sequence, starts, offsets[1:] - offsets[:-1])


@dataclass(frozen=True)
class Pieces:
    """Pieces of at most ``window`` tokens, each inside one sequence, in token order: ``count`` (static
    P); per piece ``tokens`` [P, W] (indices into T, clamped), ``valid`` [P, W], ``sequence`` [P, 1] and
    ``first`` [P]; per token ``slot`` [T], its position in the flattened [P * W] pieces; per sequence
    ``last`` [N], its last piece (0 for an empty sequence)."""

    window: int
    count: int
    tokens: Any
    valid: Any
    sequence: Any
    first: Any
    slot: Any
    last: Any


def pieces(seg: Segments, T: int, chunk_size: int, xp: Any) -> Pieces:
    dev = device(seg.offsets)
    window = min(chunk_size, T)
    if is_concrete(seg.lengths):
        window = max(1, min(window, int(xp.max(seg.lengths))))
    per_sequence = (seg.lengths + window - 1) // window
    through = xp.cumulative_sum(per_sequence)  # pieces up to and including each sequence
    before = through - per_sequence
    count = T // window + seg.count
    if is_concrete(through):
        count = max(1, int(through[-1]))
    index = xp.arange(count, dtype=seg.offsets.dtype, device=dev)
    owner = xp.clip(xp.searchsorted(through, index, side="right"), 0, seg.count - 1)
    rank = index - xp.take(before, owner)
    start = xp.take(seg.offsets, owner) + rank * window
    length = xp.clip(xp.take(seg.ends, owner) - start, 0, window)
    offsets_in = xp.arange(window, dtype=seg.offsets.dtype, device=dev)
    tokens = xp.clip(start[:, None] + offsets_in[None, :], 0, T - 1)
    valid = offsets_in[None, :] < length[:, None]
    token = xp.arange(T, dtype=seg.offsets.dtype, device=dev)
    within = token - xp.take(seg.offsets, seg.sequence)
    slot = (xp.take(before, seg.sequence) + within // window) * window + within % window
    last = xp.clip(through - 1, 0, count - 1)
    return Pieces(window, count, tokens, valid, owner[:, None], (rank == 0) & (length > 0), slot, last)


def run(request: Any, form: str, executor: Any) -> tuple[Any, Any]:
    """(y, State or None) of a packed request: the three parts of the module doc."""
    from .forms import FORMS

    xp = request.xp
    seg = segments(request.cu_seqlens, request.T, xp)
    p = prepare(request, executor, resume=False, segments=seg)
    partial, _ = FORMS[form](p, False, finished=False)
    state = None
    initial = request.initial_state
    if initial is not None or request.return_state:
        by_piece = _pieces_scan(p, request, seg, pieces(seg, request.T, request.chunk_size, xp))
        if initial is not None:
            partial = merge(partial, by_piece.pop(0), xp)
        if request.return_state:
            state = by_piece.pop(0)
    return finish(partial, p.normalize, p.eps, xp), state


def _pieces_scan(p: Prepared, request: Any, seg: Segments, pcs: Pieces) -> list[Any]:
    """Parts 2 and 3 of the module doc, one ``p.scan`` step per piece: [the partial (num, den, m) of every
    token against its sequence's initial state, if there is one], [the final State, if asked for]."""
    xp, kernel = p.xp, p.kernel
    resumed, finals = request.initial_state is not None, request.return_state
    batch = p.yq.shape[:-2]
    size = p.halves * kernel.feature_size(p.yq.shape[-1])
    dev = device(p.yq)
    zero_scale = xp.full(batch, -math.inf, dtype=p.state_dtype, device=dev)
    empty = (  # the carry's shapes: one sequence's sums, batch-wide
        xp.zeros((*batch, size, p.e), dtype=p.state_dtype, device=dev),
        xp.zeros((*batch, size), dtype=p.state_dtype, device=dev),
    )
    if resumed:  # one state per sequence [N, *batch, ...]
        initial = request.initial_state
        lead = (seg.count, *batch)
        S0, z0 = (xp.astype(x, p.state_dtype, copy=False) for x in (initial.S, initial.z))
        S0, z0 = xp.broadcast_to(S0, (*lead, size, p.e)), xp.broadcast_to(z0, (*lead, size))
        scale0 = xp.broadcast_to(xp.astype(initial.log_scale, p.state_dtype), lead)
    gates = p.for_state(p.unbroken_g)
    query_weight, key_weight = p.for_state(p.query_weight), p.for_state(p.key_weight)

    def rows(x: Any, tokens: Any, tail: int) -> Any:
        return None if x is None else xp.take(x, tokens, axis=x.ndim - 1 - tail)

    def step(carry: tuple[Any, ...], x: tuple[Any, ...]) -> tuple[Any, tuple[Any, ...]]:
        S, z, scale, since_start = carry
        tokens, valid, sequence, first = x
        if resumed:
            own = Element(None, *(xp.take(a, sequence, axis=0)[0, ...] for a in (scale0, S0, z0)))
        else:
            own = Element(None, xp.full_like(scale, -math.inf), xp.zeros_like(S), xp.zeros_like(z))
        S, z = xp.where(first, own.S, S), xp.where(first, own.z, z)
        scale = xp.where(first, own.M, scale)
        since_start = xp.where(first, xp.zeros_like(since_start), since_start)
        g = xp.zeros((*batch, tokens.shape[0]), dtype=p.state_dtype, device=dev)
        if gates is not None:
            g = xp.where(valid, rows(gates, tokens, 0), g)
        out: tuple[Any, ...] = ()
        if resumed:
            direction = (rows(p.q_dir[0], tokens, 1), rows(p.q_dir[1], tokens, 0))
            features, lam = scaled(kernel, None, xp, p.state_direction(direction))
            decay = since_start[..., None] + prefix_sums(g, xp)
            out += query_sums(features, lam, decay, own, rows(query_weight, tokens, 1), xp)
        total = xp.sum(g, axis=-1)
        if finals:
            direction = (rows(p.k_dir[0], tokens, 1), rows(p.k_dir[1], tokens, 0))
            features, lam = scaled(kernel, None, xp, p.state_direction(direction))
            to_end = xp.where(valid, suffix_sums(g, xp), xp.full_like(g, -math.inf))
            values = p.for_state(rows(p.v, tokens, 1))
            decayed = Element(None, scale + total, S, z)
            piece = chunk_states(features, lam, to_end, values, rows(key_weight, tokens, 1), xp, decayed.M)
            state = extend(decayed, piece, xp)
            S, z, scale = state.S, state.z, state.M
            out += (S, z, scale)
        return (S, z, scale, since_start + total), out

    carry = (*empty, zero_scale, xp.zeros_like(zero_scale))
    _, out = p.scan(step, carry, (pcs.tokens, pcs.valid, pcs.sequence, pcs.first))
    results: list[Any] = []
    if resumed:
        num, den, m = (xp.moveaxis(x, 0, len(batch)) for x in out[:3])  # [B, P, W, ...]
        flat = pcs.count * pcs.window
        num = xp.reshape(num, (*batch, flat, p.e))
        den, m = (xp.reshape(x, (*batch, flat)) for x in (den, m))
        results.append(p.back((xp.take(num, pcs.slot, axis=-2), xp.take(den, pcs.slot, axis=-1),
                               xp.take(m, pcs.slot, axis=-1))))  # fmt: skip
        out = out[3:]
    if finals:
        S, z, scales = (xp.take(x, pcs.last, axis=0) for x in out)
        if not resumed:  # an empty sequence returns its initial state (or an empty one)
            S0, z0, scale0 = xp.zeros_like(S), xp.zeros_like(z), xp.full_like(scales, -math.inf)
        is_empty = seg.lengths == 0
        S, z, scales = (xp.where(_along_first(is_empty, a.ndim, xp), a0, a)
                        for a, a0 in ((S, S0), (z, z0), (scales, scale0)))  # fmt: skip
        results.append(p.state_class(S=S, z=z, mu=p.mu_end, log_scale=scales))
    return results


def _along_first(mask: Any, ndim: int, xp: Any) -> Any:
    """mask [N] shaped to broadcast along the first axis of an array of ``ndim`` axes."""
    return xp.reshape(mask, (mask.shape[0], *(1,) * (ndim - 1)))
