"""Whether an array's values can be read now: not a JAX tracer inside jit/grad/vmap, not a tensor that
torch.compile is tracing, nor a lazy array."""

from __future__ import annotations

import sys
from typing import Any

from array_api_compat import is_jax_array, is_lazy_array, is_torch_array


def is_concrete(x: Any) -> bool:
    """True unless ``x`` is traced by JAX or torch.compile, or is a lazy (deferred) array such as dask's.

    array_api_compat calls every JAX array lazy, since JAX dispatches asynchronously; a concrete JAX array
    can still be read, so only its tracers count as unreadable here.
    """
    if is_jax_array(x):
        import jax  # already imported: x is a JAX array

        return not isinstance(x, jax.core.Tracer)
    if is_torch_array(x):
        return not sys.modules["torch"].compiler.is_compiling()
    return not is_lazy_array(x)
