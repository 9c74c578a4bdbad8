"""The one tolerance table, by dtype name, shared by the tests and the benchmarks.

An output ``y`` is compared with a reference ``y_ref`` (float64, computed on the same inputs rounded
to the tested dtype) by

    normalised output:    max |y - y_ref| / max(max |v|, tiny)
    unnormalised output:  max |y - y_ref| / max(max |y_ref|, tiny)

and the error must not exceed ``tolerance(dtype_name)``. Normalised outputs are convex combinations
of the rows of v, hence the scale max |v| (math.md: "float32 to about 1e-4 relative to max |v|").
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

TOLERANCES: dict[str, float] = {
    "float64": 1e-10,
    "float32": 1e-4,
    "float16": 2e-2,
    "bfloat16": 2e-2,
}

TINY = float(np.finfo(np.float64).tiny)


def tolerance(dtype_name: str) -> float:
    """The accepted relative error for outputs of dtype ``dtype_name`` ("float32", ...)."""
    name = str(dtype_name).rsplit(".", 1)[-1]
    try:
        return TOLERANCES[name]
    except KeyError:
        raise ValueError(f"no tolerance for dtype {dtype_name!r}; known: {sorted(TOLERANCES)}") from None


def dtype_name(x: Any) -> str:
    """The dtype name of an array of any namespace: "float32", "float64", "bfloat16", ..."""
    return str(x.dtype).rsplit(".", 1)[-1]


def to_numpy(x: Any) -> np.ndarray:
    """A float64 NumPy copy of an array of NumPy, PyTorch, JAX, array-api-strict (or a scalar)."""
    if isinstance(x, np.ndarray | np.generic | float | int):
        return np.array(x, dtype=np.float64)
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(x, torch.Tensor):
        return x.detach().cpu().double().numpy()
    jax = sys.modules.get("jax")
    if jax is not None and isinstance(x, jax.Array):
        return np.array(np.asarray(x), dtype=np.float64)
    import array_api_compat

    on_cpu = array_api_compat.to_device(x, "cpu") if _needs_transfer(x) else x
    return np.array(np.asarray(on_cpu), dtype=np.float64)


def _needs_transfer(x: Any) -> bool:
    import array_api_compat

    return array_api_compat.is_cupy_array(x)


def relative_error(y: Any, y_ref: Any, v: Any = None, *, normalize: bool) -> float:
    """max |y - y_ref| over max |v| (normalised) or max |y_ref| (unnormalised); inf on a shape or
    finiteness mismatch."""
    y = to_numpy(y)
    y_ref = to_numpy(y_ref)
    if y.shape != y_ref.shape:
        return float("inf")
    if y.size == 0:
        return 0.0
    if not np.isfinite(y).all():
        return float("inf")
    if normalize:
        if v is None:
            raise ValueError("v is needed to measure the error of normalised output")
        v = to_numpy(v)
        scale = float(np.max(np.abs(v))) if v.size else 0.0
    else:
        scale = float(np.max(np.abs(y_ref)))
    return float(np.max(np.abs(y - y_ref))) / max(scale, TINY)


def assert_close(
    y: Any, y_ref: Any, v: Any = None, *, dtype_name: str, normalize: bool, what: str = ""
) -> None:
    """Raise AssertionError unless ``y`` is within ``tolerance(dtype_name)`` of ``y_ref``."""
    tol = tolerance(dtype_name)
    y_np = to_numpy(y)
    y_ref_np = to_numpy(y_ref)
    prefix = f"{what}: " if what else ""
    if y_np.shape != y_ref_np.shape:
        raise AssertionError(f"{prefix}shape {y_np.shape} != reference shape {y_ref_np.shape}")
    if not np.isfinite(y_np).all():
        bad = np.argwhere(~np.isfinite(y_np))
        raise AssertionError(
            f"{prefix}{len(bad)} non-finite entries, first at {tuple(bad[0])}: {y_np[tuple(bad[0])]}"
        )
    err = relative_error(y_np, y_ref_np, v, normalize=normalize)
    if not err <= tol:
        worst = np.unravel_index(np.argmax(np.abs(y_np - y_ref_np)), y_np.shape)
        base = "max|v|" if normalize else "max|y_ref|"
        raise AssertionError(
            f"{prefix}error {err:.3e} relative to {base} exceeds the {dtype_name} tolerance "
            f"{tol:.1e}; worst entry {tuple(int(i) for i in worst)}: got {y_np[worst]!r}, "
            f"expected {y_ref_np[worst]!r}"
        )
