"""Backends behind ``sympow.attention``: ``available()``, ``use(name)``, and the registry.

Registered here by name only; a backend's module is imported the first time it is asked about.
"""

from __future__ import annotations

from .registry import (
    ENVIRONMENT_VARIABLE,
    Availability,
    Backend,
    available,
    register,
    registered,
    select,
    use,
)

__all__ = [
    "ENVIRONMENT_VARIABLE", "Availability", "Backend", "available", "register", "registered",
    "select", "use",
]  # fmt: skip

register(
    Backend(
        name="reference",
        module="sympow.backends.reference",
        libraries=("*",),
        requires=(),
        priority=0,
        differentiable=True,
        description="the array-API specification (NumPy, PyTorch, JAX, CuPy, array-api-strict)",
    )
)
