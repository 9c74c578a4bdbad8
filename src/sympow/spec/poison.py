"""NaN where a value check could not run (api.md, "Input checks"; math.md 7).

``validate`` reads every array's values (finite q, k, v, rotary and State fields; log_gate <= 0;
proportions in [0, 1]) and raises before computing. Under ``jax.jit``, ``jax.vmap``, ``torch.compile``
or for lazy arrays the values cannot be read, so those checks cannot raise. The output then carries NaN
wherever a forbidden value takes part, instead of a finite number that means nothing:

    row i of y is NaN  if  q_i, a_i                           is forbidden (the query's own token), or
                           k_j, v_j, rotary_j, log_gate_j, b_j is forbidden for some j <= i, or
                           any field of the initial State is forbidden;
    packed (``cu_seqlens``): j and the initial State of row i's own sequence only, and every row when
                           the offsets are not 0 = o_0 <= ... <= o_N = T;
    the final State      is NaN in every field when any of the above holds for some token.

Each flag is 0 or NaN, added to the output, so an allowed input costs one elementwise add and its values
are unchanged (x + 0 = x exactly, signed zeros aside).
"""

from __future__ import annotations

import math
from typing import Any

from .checks import Request, forbidden_log_gate, forbidden_log_scale, forbidden_offsets, forbidden_proportion
from .packed import segments
from .rotary import _segmented_scan
from .state import State


def _flag(bad: Any, xp: Any, dtype: Any) -> Any:
    return xp.where(bad, xp.asarray(math.nan, dtype=dtype), xp.asarray(0.0, dtype=dtype))


def _token_flags(request: Request, dtype: Any) -> tuple[Any, Any]:
    """(own [..., T], causal [..., T]): the 0/NaN flags of the query's own token and of every token
    whose forbidden value reaches the rows from it on."""
    xp = request.xp

    def rows_of(x: Any) -> Any:  # [..., T, n] -> [..., T]
        return xp.any(~xp.isfinite(x), axis=-1)

    own = _flag(rows_of(request.q), xp, dtype)
    causal = _flag(rows_of(request.k), xp, dtype) + _flag(rows_of(request.v), xp, dtype)
    if request.rotary is not None:
        causal = causal + _flag(rows_of(request.rotary), xp, dtype)
    if request.log_gate is not None:
        causal = causal + _flag(forbidden_log_gate(request.log_gate, xp), xp, dtype)
    if request.proportions is not None:
        a, b = request.proportions
        own = own + _flag(forbidden_proportion(a, xp), xp, dtype)
        causal = causal + _flag(forbidden_proportion(b, xp), xp, dtype)
    return own, causal


def _state_flag(state: State, xp: Any, dtype: Any) -> Any:
    """[...]: NaN where a field of the resumed State is forbidden (as ``checks._check_state_values``)."""
    flag = _flag(forbidden_log_scale(state.log_scale, xp), xp, dtype)
    for x, trailing in ((state.S, 2), (state.z, 1), (state.mu, 1)):
        if x is not None:
            flag = flag + _flag(xp.isnan(_zero_or_nan(x, trailing, xp)), xp, dtype)
    return flag


def _zero_or_nan(x: Any, trailing: int, xp: Any) -> Any:
    """[...]: 0 where the ``trailing`` last axes of x hold finite numbers only, NaN elsewhere, exactly: x * 0
    is (signed) zero for a finite entry and NaN for an infinite or NaN one, and max (which propagates NaN,
    by the array API standard) and sum keep that. One read of x, as a compiled decoding step can afford:
    the row maxima first, then their sum (XLA's CPU reductions of a fused product over two axes at once
    run at a third of this speed; a mask of isfinite costs one more pass)."""
    zeros = xp.max(x * 0.0, axis=-1)
    return zeros if trailing == 1 else xp.sum(zeros, axis=tuple(range(-trailing + 1, 0)))


def _row_flags(request: Request, dtype: Any) -> Any:
    """[B, T]: the 0/NaN flag of every output row (module doc)."""
    xp, batch, T = request.xp, request.batch_shape, request.T
    own, causal = _token_flags(request, dtype)
    causal = xp.broadcast_to(causal, (*batch, T))
    if request.cu_seqlens is None:
        rows = xp.broadcast_to(own, (*batch, T)) + xp.cumulative_sum(causal, axis=-1)
        if request.initial_state is not None:
            rows = rows + xp.broadcast_to(_state_flag(request.initial_state, xp, dtype), batch)[..., None]
        return rows
    # packed: a forbidden value reaches the later rows of its own sequence only; bad offsets, every row
    seg = segments(request.cu_seqlens, T, xp)
    rows = xp.broadcast_to(own, (*batch, T)) + _segmented_scan(causal[..., None], seg.starts, xp)[..., 0]
    if request.initial_state is not None:
        per_sequence = xp.broadcast_to(_state_flag(request.initial_state, xp, dtype), (seg.count, *batch))
        rows = rows + xp.moveaxis(xp.take(per_sequence, seg.sequence, axis=0), 0, -1)
    return rows + _flag(forbidden_offsets(request.cu_seqlens, T, xp), xp, dtype)


def call_flag(request: Request, dtype: Any) -> Any:
    """[B]: NaN where a forbidden value takes part anywhere in the call (what a sequence group's members
    exchange, so that a forbidden value on one member reaches the rows after it on the others)."""
    return request.xp.sum(_row_flags(request, dtype), axis=-1)


def poisoned(
    request: Request, y: Any, state: State | None, before: Any = None, whole: Any = None
) -> tuple[Any, State | None]:
    """(y, state) with NaN added where a forbidden value takes part (module doc); unchanged when
    ``validate`` could read the values (``request.values_checked``). A member of a sequence group passes
    ``before`` [B], the flag of the members before it (added to every row), and ``whole`` [B], that of
    the whole sequence (for the State)."""
    if request.values_checked:
        return y, state
    xp = request.xp
    rows = _row_flags(request, y.dtype)
    if before is not None:
        rows = rows + xp.astype(before, y.dtype)[..., None]
    y = y + rows[..., None]
    if state is None:
        return y, None
    if whole is None:  # NaN if any row is; read from y, whose rows carry the flags (see _after_outputs)
        whole = xp.sum(rows, axis=-1) + _after_outputs(y, xp)

    def spoil(x: Any, trailing: int) -> Any:
        if x is None:
            return None
        flag = xp.astype(whole, x.dtype)
        return x + xp.reshape(flag, (*flag.shape, *(1,) * trailing))

    return y, state._replace(S=spoil(state.S, 2), z=spoil(state.z, 1), mu=spoil(state.mu, 1),
                             log_scale=spoil(state.log_scale, 0))  # fmt: skip


def _after_outputs(y: Any, xp: Any) -> Any:
    """[B]: 0, or NaN where a row of y is NaN (a flagged row: the flags are already in y), a number that
    makes the returned State depend on y. In a compiled loop that carries the State this orders the query
    of the resumed state before the state's update, so that the compiler updates it in place instead of
    copying it first (XLA: a decoding step of jax.lax.scan reads and writes its state once instead of
    twice). min(max |y_i|, 0) is 0 for a finite or infinite row (an unnormalised output may overflow
    without anything forbidden) and NaN only for a NaN one, which max and min propagate."""
    largest = xp.max(xp.abs(y), axis=-1)
    return xp.sum(xp.minimum(largest, xp.zeros_like(largest)), axis=-1)
