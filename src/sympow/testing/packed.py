"""Packed sequences for tests and benchmarks: random offsets, and the loop of separate calls that a packed
call must equal (math.md 10).

``make_offsets`` draws seeded offsets 0 = o_0 <= ... <= o_N = T; ``per_sequence`` computes what a call
with ``cu_seqlens=offsets`` must return, as N separate calls of ``sympow.attention`` on the slices
[o_n, o_{n+1}), their outputs joined along T and their States stacked along a new leading axis (an empty
sequence returns its initial state, or an empty one).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from array_api_compat import array_namespace

from ..spec.state import State

TOKEN_INPUTS = {"q": 2, "k": 2, "v": 2, "log_gate": 1, "rotary": 2}  # name: axes from T to the end


def make_offsets(T: int, count: int, *, seed: int = 0, empty: bool = True) -> list[int]:
    """``count`` sequences over T tokens: sorted random cut points (repeated cuts, i.e. empty sequences,
    only where ``empty``; then count - 1 <= T - 1 is required)."""
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    rng = np.random.default_rng(seed)
    if empty:
        cuts = rng.integers(0, T + 1, size=count - 1)
    else:
        if count > T:
            raise ValueError(f"{count} non-empty sequences need T >= {count}, got T = {T}")
        cuts = rng.choice(np.arange(1, T), size=count - 1, replace=False)
    return [0, *sorted(int(c) for c in cuts), T]


def slice_inputs(inputs: dict[str, Any], lo: int, hi: int) -> dict[str, Any]:
    """The per-token arrays of ``inputs`` (q, k, v, log_gate, rotary, proportions) cut to tokens [lo, hi)."""
    out = dict(inputs)
    for name, tail in TOKEN_INPUTS.items():
        x = inputs.get(name)
        if x is not None:
            out[name] = x[(..., slice(lo, hi), *(slice(None),) * (tail - 1))]
    if inputs.get("proportions") is not None:
        out["proportions"] = tuple(x[..., lo:hi] for x in inputs["proportions"])
    return out


def sequence_state(state: State, n: int) -> State:
    """Sequence n's State out of a packed one (its leading axis)."""
    return type(state)(*(None if x is None else x[n, ...] for x in state))


def per_sequence(
    attention: Any,
    inputs: dict[str, Any],
    offsets: Sequence[int],
    *,
    initial_state: State | None = None,
    token_axis: int = -2,
    **options: Any,
) -> tuple[Any, State | None]:
    """(y [..., T, e], State with a leading axis of N, or None) of N separate calls
    ``attention(**slice_inputs(inputs, o_n, o_{n+1}), initial_state=initial_state[n], **options)``
    (``initial_state`` passed only when given);
    the State only with ``return_state=True`` in ``options``. Any array library. The outputs are joined
    along ``token_axis`` (-1 for a function returning [..., T], such as ``condition_numbers``)."""
    offsets = [int(o) for o in offsets]
    ys, states = [], []
    wants_state = bool(options.get("return_state"))
    for n, (lo, hi) in enumerate(itertools.pairwise(offsets)):
        start = None if initial_state is None else sequence_state(initial_state, n)
        if hi == lo:
            states.append(start)
            continue
        resumed = {} if start is None else {"initial_state": start}
        result = attention(**slice_inputs(inputs, lo, hi), **resumed, **options)
        y, state = result if wants_state else (result, None)
        ys.append(y)
        states.append(state)
    xp = array_namespace(ys[0])
    y = xp.concat(ys, axis=token_axis)
    if not wants_state:
        return y, None
    return y, _stack(states, xp)


def _stack(states: list[State | None], xp: Any) -> State:
    """The States of N sequences along a new leading axis; None (an empty sequence without an initial
    state) becomes an empty state like the others: zero sums, log scale -inf, angle 0."""
    model = next(s for s in states if s is not None)
    empty = type(model)(
        S=xp.zeros_like(model.S), z=xp.zeros_like(model.z),
        mu=None if model.mu is None else xp.zeros_like(model.mu),
        log_scale=xp.full_like(model.log_scale, -math.inf),
    )  # fmt: skip
    filled = [empty if s is None else s for s in states]
    fields = {}
    for field in State._fields:
        parts = [getattr(s, field) for s in filled]
        fields[field] = None if parts[0] is None else xp.stack(parts, axis=0)
    return type(model)(**fields)
