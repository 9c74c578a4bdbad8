"""Adapters from other tensor layouts to the signature of ``sympow.attention``, for ``check``.

The cases use sympow's layout: q, k [*B, T, d], v [*B, T, e], log_gate and proportions [*B, T], rotary
[*B, T, d/2], with leading axes that broadcast. ``adapt_layout(fn, layout)`` turns an implementation in
one of the peers' layouts into that signature: it broadcasts every array to the full batch shape B,
flattens B to (b, h) = (prod B[:-1], B[-1]) (to (1, 1) when B is empty), moves axes, calls ``fn`` and
moves the output back:

    "bthd"   q, k [b, T, h, d]   v [b, T, h, e]   log_gate, a, b [b, T, h]   rotary [b, T, h, d/2]
             (power-attention, flash-linear-attention's linear_attn and simple_gla)
    "bhtd"   q, k [b, h, T, d]   v [b, h, T, e]   log_gate, a, b [b, h, T]   rotary [b, h, T, d/2]
             (flash-linear-attention's naive based / rebased, ReBased)
    "btd"    q, k [b*h, T, d]    v [b*h, T, e]    log_gate, a, b [b*h, T]    rotary [b*h, T, d/2]
             (LeaPformer's fairseq code)

``fn`` receives the options by their sympow names (kernel, power, scale, log_gate, proportions, rotary,
rotary_layout, normalize, eps; initial_state and return_state only when given). A ``sympow.State``
passes with its batch axes flattened the same way ([b, h, ...], or [b*h, ...] for "btd"); any other
state object passes through untouched.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from array_api_compat import array_namespace

from ..spec.checks import broadcast_shapes
from ..spec.state import State

LAYOUTS = ("bthd", "bhtd", "btd")


def adapt_layout(fn: Callable[..., Any], layout: str = "bthd") -> Callable[..., Any]:
    """A callable with the signature of ``sympow.attention`` that runs ``fn`` in ``layout`` (see module)."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")

    def adapted(
        q: Any,
        k: Any,
        v: Any,
        *,
        log_gate: Any = None,
        proportions: tuple[Any, Any] | None = None,
        rotary: Any = None,
        initial_state: Any = None,
        return_state: bool = False,
        **options: Any,
    ) -> Any:
        xp = array_namespace(q)
        leading = {"q": q.shape[:-2], "k": k.shape[:-2], "v": v.shape[:-2]}
        if log_gate is not None:
            leading["log_gate"] = log_gate.shape[:-1]
        if proportions is not None:
            leading["a"], leading["b"] = proportions[0].shape[:-1], proportions[1].shape[:-1]
        if rotary is not None:
            leading["rotary"] = rotary.shape[:-2]
        if isinstance(initial_state, State):
            leading["state"] = initial_state.log_scale.shape
        batch = broadcast_shapes({key: tuple(shape) for key, shape in leading.items()})
        grid = _grid(batch)

        def sequence(x: Any, trailing: int) -> Any:
            """[..., T, *tail] (trailing = 1 + len(tail)) -> the layout's axes."""
            if x is None:
                return None
            tail = tuple(x.shape[x.ndim - trailing :])
            x = xp.reshape(xp.broadcast_to(x, (*batch, *tail)), (*grid, *tail))
            if layout == "btd":
                return xp.reshape(x, (grid[0] * grid[1], *tail))
            if layout == "bthd":
                return xp.permute_dims(x, (0, 2, 1, *range(3, x.ndim)))
            return x

        arguments = {
            "log_gate": sequence(log_gate, 1),
            "proportions": None if proportions is None else tuple(sequence(x, 1) for x in proportions),
            "rotary": sequence(rotary, 2),
        }
        if initial_state is not None:
            arguments["initial_state"] = _state_to(initial_state, batch, grid, layout, xp)
        if return_state:
            arguments["return_state"] = True
        out = fn(sequence(q, 2), sequence(k, 2), sequence(v, 2), **arguments, **options)
        y, state = out if return_state else (out, None)
        if layout == "bthd":
            y = xp.permute_dims(y, (0, 2, 1, 3))
        y = xp.reshape(y, (*batch, *y.shape[-2:]))
        if not return_state:
            return y
        return y, _state_from(state, batch, xp)

    adapted.__name__ = f"{getattr(fn, '__name__', 'fn')}_as_{layout}"
    adapted.__doc__ = f"{getattr(fn, '__name__', 'fn')} in layout {layout!r}, called as sympow.attention."
    return adapted


def _grid(batch: tuple[int, ...]) -> tuple[int, int]:
    """(b, h): the batch shape flattened to two axes, the last one kept as heads."""
    if not batch:
        return 1, 1
    return math.prod(batch[:-1]), batch[-1]


def _state_to(state: Any, batch: tuple[int, ...], grid: tuple[int, int], layout: str, xp: Any) -> Any:
    if not isinstance(state, State):
        return state
    target = (grid[0] * grid[1],) if layout == "btd" else grid

    def one(x: Any, trailing: int) -> Any:
        if x is None:
            return None
        tail = tuple(x.shape[x.ndim - trailing :])
        return xp.reshape(xp.broadcast_to(x, (*batch, *tail)), (*target, *tail))

    return type(state)(one(state.S, 2), one(state.z, 1), one(state.mu, 1), one(state.log_scale, 0))


def _state_from(state: Any, batch: tuple[int, ...], xp: Any) -> Any:
    if not isinstance(state, State):
        return state

    def one(x: Any, trailing: int) -> Any:
        if x is None:
            return None
        return xp.reshape(x, (*batch, *x.shape[x.ndim - trailing :]))

    return type(state)(one(state.S, 2), one(state.z, 1), one(state.mu, 1), one(state.log_scale, 0))
