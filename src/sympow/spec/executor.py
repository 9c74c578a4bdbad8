"""What a backend supplies to run the one algorithm of spec/ (layout.md, "One algorithm, several executors").

The forms are written once, against the array API. A backend executes them with its namespace and the
few primitives that differ by framework; here, the loop over chunks and tokens:

    scan(step, carry, xs) -> (carry, ys)

``xs`` is a tuple of arrays (entries may be None) scanned along their first axis; ``step(carry, x)``
gets the slices and returns (carry, y) with ``y`` a tuple of arrays, which ``scan`` stacks along a new
first axis. The carry keeps its shapes and dtypes from step to step. ``loop_scan`` is a Python loop
(NumPy, PyTorch, CuPy, array-api-strict; under torch.compile it unrolls, one graph); JAX executes the
same ``step`` with ``lax.scan``, compiled once whatever the number of steps.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Step = Callable[[Any, tuple[Any, ...]], tuple[Any, tuple[Any, ...]]]
Scan = Callable[[Step, Any, tuple[Any, ...]], tuple[Any, tuple[Any, ...]]]


def loop_scan(xp: Any) -> Scan:
    """``scan`` as a Python loop over ``xp.unstack`` slices (one stack in the gradient, not a copy of
    the whole array per step)."""

    def scan(step: Step, carry: Any, xs: tuple[Any, ...]) -> tuple[Any, tuple[Any, ...]]:
        length = next(x.shape[0] for x in xs if x is not None)
        slices = [[None] * length if x is None else xp.unstack(x, axis=0) for x in xs]
        outputs: list[tuple[Any, ...]] = []
        for i in range(length):
            carry, y = step(carry, tuple(s[i] for s in slices))
            outputs.append(y)
        return carry, tuple(xp.stack(list(column), axis=0) for column in zip(*outputs, strict=True))

    return scan


@dataclass(frozen=True)
class Executor:
    """How a backend runs the spec: ``scan(xp)`` gives the loop primitive for a namespace; ``group``, where
    the backend has collectives, turns a ``sequence_group`` argument into a ``sequence.Group``."""

    name: str
    scan: Callable[[Any], Scan] = loop_scan
    group: Callable[[Any], Any] | None = None


REFERENCE = Executor("reference")
