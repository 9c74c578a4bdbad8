"""Static tables: pure functions of shapes and options (feature orders, block layouts, coefficients).

They return plain Python data, are cached, and never see an array. ``STATIC`` lists them so that an
executor can tell a tracing compiler to call them once instead of tracing their Python
(torch.compile: ``torch.compiler.assume_constant_result``, see backends/torch_native.py).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache, wraps
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])
STATIC: list[Callable[..., Any]] = []


def static(fn: F) -> F:
    """Cache ``fn`` (arguments hashable, result immutable) and list it in ``STATIC``; the wrapper is a
    plain function, which is what compile hooks mark."""
    cached = lru_cache(maxsize=128)(fn)

    @wraps(fn)
    def table(*args: Any) -> Any:
        return cached(*args)

    STATIC.append(table)
    return table  # type: ignore[return-value]
