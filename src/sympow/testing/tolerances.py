"""The one tolerance table, by dtype name, shared by the tests and the benchmarks.

An output ``y`` is compared with a reference ``y_ref`` (float64, computed on the same inputs rounded
to the tested dtype) by

    normalised output:    max |y - y_ref| / max(max |v|, tiny)
    unnormalised output:  max |y - y_ref| / max(max |y_ref|, tiny)

and the error must not exceed ``tolerance(dtype_name)``. Normalised outputs are convex combinations
of the rows of v, hence the scale max |v| (math.md: "float32 to about 1e-4 relative to max |v|").
"""

from __future__ import annotations

import math
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
    rows = relative_errors_by_row(np.atleast_1d(y), np.atleast_1d(y_ref), v, normalize=normalize)
    return float(np.max(rows))


def angle_error(mu: Any, mu_ref: Any) -> float:
    """max |mu - mu_ref| modulo 2 pi, in radians: each difference wrapped into [-pi, pi] before its
    magnitude is taken, so angles that differ by whole turns agree (a state may keep mu wrapped,
    math.md 7) while a sign flip or a lost or doubled increment does not; inf on a shape or
    finiteness mismatch. Comparing cos(mu) alone would accept mu_ref = -mu."""
    a, b = to_numpy(mu), to_numpy(mu_ref)
    if a.shape != b.shape or not (np.isfinite(a).all() and np.isfinite(b).all()):
        return float("inf")
    wrapped = np.remainder(a - b + math.pi, 2 * math.pi) - math.pi
    return float(np.max(np.abs(wrapped), initial=0.0))


def _error_scale(y_ref: np.ndarray, v: Any, normalize: bool) -> float:
    """max |v| for normalised output (v required), max |y_ref| otherwise."""
    if normalize:
        if v is None:
            raise ValueError("v is needed to measure the error of normalised output")
        v_np = to_numpy(v)
        return float(np.max(np.abs(v_np))) if v_np.size else 0.0
    return float(np.max(np.abs(y_ref))) if y_ref.size else 0.0


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


# ----------------------------------------------------------------------------------------------------------
# Per-row tolerances of a state path (math.md 9; docs/math.md 8): max(tau, gamma u c_i / (1 - u c_i))

UNIT_ROUNDOFF: dict[str, float] = {
    "float64": 2.0**-53,
    "float32": 2.0**-24,
    "float16": 2.0**-11,
    "bfloat16": 2.0**-8,
}

# The factor gamma of the state-path term (math.md 9), calibrated by benchmarks/calibrate_state_path.py
# (results/state_path_gamma.csv): over D' = 10 .. 52360, T = 64 .. 2048, the chunked and recurrent forms
# of the reference and the torch backend, nearly orthogonal inputs with gates on and off, the rows with
# u c_i < 1 needed at most 4.1 (one row near u c = 1) and otherwise at most 0.6 (typically 0.1 to 0.3);
# 8 leaves a margin of 2 over the worst and keeps the table's tolerance for every row with
# c_i <= tau / (8 u), about 210 in float32 (docs/math.md, section 8).
GAMMA = 8.0


def _short_name(dtype_name: str) -> str:
    return str(dtype_name).rsplit(".", 1)[-1]


def unit_roundoff(dtype_name: str) -> float:
    """u of a floating dtype: 2^-24 for float32, 2^-53 for float64 (2^-11 float16, 2^-8 bfloat16)."""
    name = _short_name(dtype_name)
    try:
        return UNIT_ROUNDOFF[name]
    except KeyError:
        raise ValueError(
            f"no unit round-off for dtype {dtype_name!r}; known: {sorted(UNIT_ROUNDOFF)}"
        ) from None


def accumulation_dtype(dtype_name: str) -> str:
    """The accumulation dtype of inputs of ``dtype_name``: float64 for float64, float32 otherwise."""
    tolerance(dtype_name)  # an unknown name is an error
    return "float64" if _short_name(dtype_name) == "float64" else "float32"


def contract_state_dtype(dtype_name: str, *, highest_degree: int, state_dtype: str | None = None) -> str:
    """The dtype of the state path that math.md 9 prescribes: ``state_dtype`` when given, else the
    inputs' accumulation dtype when the kernel's highest degree is <= 4 and float64 above 4."""
    if state_dtype is not None:
        unit_roundoff(state_dtype)
        return _short_name(state_dtype)
    return accumulation_dtype(dtype_name) if highest_degree <= 4 else "float64"


def state_path_gamma(feature_size: int | None = None, T: int | None = None) -> float:
    """gamma of ``row_tolerances``, as a function of the state's feature size D' and the length T.

    The measured need does not grow with D' (10 .. 52360) or T (64 .. 2048), so the law is the constant
    ``GAMMA``; the arguments are where a slowly growing law would enter if a wider calibration asks for
    one."""
    return GAMMA


def row_tolerances(
    c: Any, dtype_name: str, state_dtype_name: str | None = None, *, gamma: float | None = None
) -> np.ndarray:
    """tol_i = max(tau, gamma u c_i / (1 - u c_i)), the accepted error of each output row (math.md 9).

    ``c`` [..., T]: condition numbers (``condition_numbers``); tau_dtype = ``tolerance(dtype_name)``;
    u the unit round-off of ``state_dtype_name`` (None: the accumulation dtype of ``dtype_name``, float32
    for float16, bfloat16 and float32, float64 for float64); gamma defaults to ``state_path_gamma()``.

    The sum tau + gamma u c_i of math.md 9 up to a factor of at most 2, written as a maximum so that a
    well-conditioned row (gamma u c_i <= tau, c_i <= about 200 in float32) keeps exactly the table's
    tolerance; the factor 1 / (1 - u c_i) is the first-order bound's own growth (a computed denominator
    Z (1 +- u c_i)). Where u c_i >= 1 that denominator may vanish or change sign: a state path of that
    dtype determines no digit of the row, and its tolerance is inf (as for an infinite c_i)."""
    c = to_numpy(c)
    if np.any(np.isnan(c)) or np.any(c < 0):
        raise ValueError("condition numbers must be >= 0 (or inf), got a negative or NaN entry")
    state = accumulation_dtype(dtype_name) if state_dtype_name is None else state_dtype_name
    factor = state_path_gamma() if gamma is None else float(gamma)
    uc = np.asarray(unit_roundoff(state) * c, dtype=np.float64)
    # only where u c_i < 1 (elsewhere inf): 1 - u c_i of a huge finite c_i would overflow the quotient
    term = np.divide(factor * uc, 1 - uc, out=np.full(uc.shape, np.inf), where=uc < 1)
    return np.maximum(tolerance(dtype_name), term)


def relative_errors_by_row(y: Any, y_ref: Any, v: Any = None, *, normalize: bool) -> np.ndarray:
    """err_i = max_c |y_ic - y_ref_ic| / scale for every row i: [..., T, e] -> [..., T].

    scale = max |v| (normalised) or max |y_ref| (unnormalised) over the whole array, as in
    ``relative_error`` (whose value is the maximum of these). Non-finite entries of y give inf."""
    y_np, y_ref_np = to_numpy(y), to_numpy(y_ref)
    if y_np.shape != y_ref_np.shape:
        raise ValueError(f"shape {y_np.shape} != reference shape {y_ref_np.shape}")
    scale = _error_scale(y_ref_np, v, normalize)
    with np.errstate(invalid="ignore"):
        diff = np.where(np.isfinite(y_np), np.abs(y_np - y_ref_np), np.inf)
    return np.max(diff, axis=-1, initial=0.0) / max(scale, TINY)


def condition_scaled_error(
    y: Any,
    y_ref: Any,
    v: Any = None,
    *,
    normalize: bool,
    dtype_name: str,
    condition: Any = None,
    state_dtype_name: str | None = None,
) -> float:
    """max_i err_i tau / tol_i: each row's error against its own tolerance (``row_tolerances``), in units
    of the table's tau, so that it passes where it is <= tau. Rows with gamma u c_i <= tau (and every
    row when ``condition`` is None) count with their plain error, so this equals ``relative_error`` on
    well-conditioned inputs. ``check`` and ``sympow validate`` report this number."""
    errors = relative_errors_by_row(y, y_ref, v, normalize=normalize)
    if errors.size == 0:
        return 0.0
    if condition is None:
        return float(np.max(errors))
    tau = tolerance(dtype_name)
    allowance = row_tolerances(condition, dtype_name, state_dtype_name) / tau
    return float(np.max(errors / np.broadcast_to(allowance, errors.shape)))


def assert_close_rows(
    y: Any,
    y_ref: Any,
    v: Any = None,
    *,
    dtype_name: str,
    normalize: bool,
    condition: Any,
    state_dtype_name: str | None = None,
    gamma: float | None = None,
    what: str = "",
) -> None:
    """Raise AssertionError unless every row i of ``y`` [..., T, e] is within tol_i of ``y_ref``.

    err_i as in ``relative_errors_by_row``; tol_i = ``row_tolerances(condition, dtype_name,
    state_dtype_name, gamma=gamma)``, ``condition`` [..., T] (broadcast to y's rows). Shape and
    finiteness are checked as in ``assert_close``; the message names the row that exceeds its tolerance
    by the largest factor, with its error, condition number and tolerance."""
    y_np, y_ref_np = to_numpy(y), to_numpy(y_ref)
    prefix = f"{what}: " if what else ""
    if y_np.shape != y_ref_np.shape:
        raise AssertionError(f"{prefix}shape {y_np.shape} != reference shape {y_ref_np.shape}")
    if y_np.ndim < 2:
        raise AssertionError(f"{prefix}rows need y of shape [..., T, e], got {y_np.shape}")
    if not np.isfinite(y_np).all():
        bad = np.argwhere(~np.isfinite(y_np))
        raise AssertionError(
            f"{prefix}{len(bad)} non-finite entries, first at {tuple(bad[0])}: {y_np[tuple(bad[0])]}"
        )
    c = to_numpy(condition)
    try:
        c = np.broadcast_to(c, y_np.shape[:-1])
    except ValueError:
        raise AssertionError(
            f"{prefix}condition numbers of shape {c.shape} do not fit the rows {y_np.shape[:-1]} of y"
        ) from None
    tol = row_tolerances(c, dtype_name, state_dtype_name, gamma=gamma)
    err = relative_errors_by_row(y_np, y_ref_np, v, normalize=normalize)
    failing = ~(err <= tol)
    if failing.any():
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            excess = np.where(failing, err / tol, -np.inf)
        worst = np.unravel_index(np.argmax(excess), err.shape)
        base = "max|v|" if normalize else "max|y_ref|"
        state = accumulation_dtype(dtype_name) if state_dtype_name is None else state_dtype_name
        raise AssertionError(
            f"{prefix}{int(failing.sum())} of {err.size} rows exceed tau + gamma u c_i ({dtype_name} "
            f"outputs, {state} state path); worst row {tuple(int(i) for i in worst)}: error "
            f"{err[worst]:.3e} relative to {base}, condition number {c[worst]:.3e}, tolerance "
            f"{tol[worst]:.3e}"
        )
