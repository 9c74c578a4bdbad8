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

register(
    Backend(
        name="torch",
        module="sympow.backends.torch_native",
        libraries=("torch",),
        requires=("torch",),
        priority=10,
        differentiable=True,
        description="PyTorch executor of the spec: autograd, torch.compile (CPU, CUDA)",
    )
)

register(
    Backend(
        name="numba",
        module="sympow.backends.numba_cuda",
        libraries=("torch", "cupy", "numpy"),
        requires=("numba",),
        priority=5,
        differentiable=False,
        description=(
            "Numba CUDA kernels, recurrent and chunked (PyTorch CUDA, CuPy; numpy only under "
            "NUMBA_ENABLE_CUDASIM=1, when named: never chosen automatically)"
        ),
    )
)

register(
    Backend(
        name="jax",
        module="sympow.backends.jax_native",
        libraries=("jax",),
        requires=("jax",),
        priority=10,
        differentiable=True,
        description="JAX executor of the spec: jax.jit, lax.scan over chunks and tokens, jax.grad, jax.vmap",
    )
)

register(
    Backend(
        name="cupy",
        module="sympow.backends.cupy_kernels",
        libraries=("cupy", "torch"),
        requires=("cupy",),
        priority=6,
        differentiable=False,
        description=(
            "CUDA C kernels through cupy.RawModule, recurrent and chunked, sympow p = 1, 2, 4 "
            "(CuPy, PyTorch CUDA by DLPack)"
        ),
    )
)
