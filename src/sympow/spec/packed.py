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
from .prepare import Prepared, pack_state, prepare, unpack_state
from .steps import chunk_states, finish, finite_or_zero, merge, query_states
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
    xp, e, kernel = p.xp, p.e, p.kernel
    resumed, finals = request.initial_state is not None, request.return_state
    batch = p.yq.shape[:-2]
    lead = (seg.count, *batch)
    initial, initial_scale = pack_state(request.initial_state, request, p.state_dtype, lead=lead)
    if initial is None:
        size = kernel.feature_size(p.yq.shape[-1])
        initial = xp.zeros((*batch, size, p.halves * (e + 1)), dtype=p.state_dtype, device=device(p.yq))
    gates = p.for_state(p.unbroken_g)
    query_weight, key_weight = p.for_state(p.query_weight), p.for_state(p.key_weight)

    def rows(x: Any, tokens: Any, tail: int) -> Any:
        return None if x is None else xp.take(x, tokens, axis=x.ndim - 1 - tail)

    def step(carry: tuple[Any, Any, Any], x: tuple[Any, ...]) -> tuple[Any, tuple[Any, ...]]:
        state, scale, since_start = carry
        tokens, valid, sequence, first = x
        if resumed:
            own = xp.take(initial, sequence, axis=0)[0, ...]
            own_scale = xp.take(initial_scale, sequence, axis=0)[0, ...]
        else:
            own, own_scale = xp.zeros_like(state), xp.full_like(scale, -math.inf)
        state = xp.where(first, own, state)
        scale = xp.where(first, own_scale, scale)
        since_start = xp.where(first, xp.zeros_like(since_start), since_start)
        g = xp.zeros((*batch, tokens.shape[0]), dtype=p.state_dtype, device=device(p.yq))
        if gates is not None:
            g = xp.where(valid, rows(gates, tokens, 0), g)
        out: tuple[Any, ...] = ()
        if resumed:
            direction = (rows(p.q_dir[0], tokens, 1), rows(p.q_dir[1], tokens, 0))
            features, lam = scaled(kernel, None, xp, p.state_direction(direction))
            decay = since_start[..., None] + prefix_sums(g, xp)
            out += query_states(features, lam, decay, own, own_scale, rows(query_weight, tokens, 1), e, xp)
        total = xp.sum(g, axis=-1)
        if finals:
            direction = (rows(p.k_dir[0], tokens, 1), rows(p.k_dir[1], tokens, 0))
            features, lam = scaled(kernel, None, xp, p.state_direction(direction))
            to_end = xp.where(valid, suffix_sums(g, xp), xp.full_like(g, -math.inf))
            values = p.for_state(rows(p.v, tokens, 1))
            piece, piece_scale = chunk_states(features, lam, to_end, values, rows(key_weight, tokens, 1), xp)
            decayed = scale + total
            new_scale = xp.maximum(decayed, piece_scale)
            reference = finite_or_zero(new_scale, xp)
            state = (
                xp.exp(decayed - reference)[..., None, None] * state
                + xp.exp(piece_scale - reference)[..., None, None] * piece
            )
            scale = new_scale
            out += (state, scale)
        return (state, scale, since_start + total), out

    zero_scale = xp.full(batch, -math.inf, dtype=p.state_dtype, device=device(p.yq))
    carry = (xp.zeros_like(initial[0, ...]) if resumed else initial, zero_scale, xp.zeros_like(zero_scale))
    _, out = p.scan(step, carry, (pcs.tokens, pcs.valid, pcs.sequence, pcs.first))
    results: list[Any] = []
    if resumed:
        num, den, m = (xp.moveaxis(x, 0, len(batch)) for x in out[:3])  # [B, P, W, ...]
        flat = pcs.count * pcs.window
        num = xp.reshape(num, (*batch, flat, e))
        den, m = (xp.reshape(x, (*batch, flat)) for x in (den, m))
        results.append(p.back((xp.take(num, pcs.slot, axis=-2), xp.take(den, pcs.slot, axis=-1),
                               xp.take(m, pcs.slot, axis=-1))))  # fmt: skip
        out = out[3:]
    if finals:
        states, scales = xp.take(out[0], pcs.last, axis=0), xp.take(out[1], pcs.last, axis=0)
        empty = seg.lengths == 0  # an empty sequence returns its initial state (or an empty one)
        if resumed:
            initial_scale = xp.broadcast_to(initial_scale, scales.shape)
        else:
            initial, initial_scale = xp.zeros_like(states), xp.full_like(scales, -math.inf)
        states = xp.where(_along_first(empty, states.ndim, xp), initial, states)
        scales = xp.where(_along_first(empty, scales.ndim, xp), initial_scale, scales)
        results.append(unpack_state(states, scales, p))
    return results


def _along_first(mask: Any, ndim: int, xp: Any) -> Any:
    """mask [N] shaped to broadcast along the first axis of an array of ``ndim`` axes."""
    return xp.reshape(mask, (mask.shape[0], *(1,) * (ndim - 1)))
