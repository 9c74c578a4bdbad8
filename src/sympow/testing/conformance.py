"""Check any implementation of ``attention`` against the shipped conformance cases.

``check(fn, cases=..., dtype=..., xp=...)`` calls ``fn(q, k, v, kernel=..., power=..., scale=...,
log_gate=..., proportions=..., rotary=..., rotary_layout=..., normalize=..., eps=..., [initial_state=...,
return_state=...])`` (the signature of ``sympow.attention``; see ``adapt_layout`` for other layouts) on
each case's inputs, converted to namespace ``xp`` and dtype ``dtype``, and measures, per case and check:

    "output"        y of one call on the whole sequence against the case's float64 y
    "state"         the final state (true sums S, z and the angle mu) of that call against the case's
    "resume"        the first ``split`` tokens, then the rest from the state ``fn`` returned: y and the
                    final state
    "from-state"    the rest from the case's own state after ``split`` tokens (a ``sympow.State``)

A packed case (tag "packed", version 2 on) passes ``cu_seqlens`` (the offsets as an int32 array of
``xp``) and is measured by "output" and "state" when its sequences start empty, and by "from-state" (y and
every sequence's final state, from the case's per-sequence initial states) when they do not. An
implementation without packed sequences leaves them out: ``load_cases(exclude_tags=["packed"])``.

Errors are those of the tolerance table (``sympow.testing.tolerances``): max |y - y_ref| over max |v|
for normalised output and over max |y_ref| otherwise; for a state, max |S - S_ref| / max |S_ref| and
the same for z, and max |mu - mu_ref| modulo 2 pi in radians. Each must not exceed ``tolerance(dtype)``.
Before any number is compared, each output must be an array of the inputs' library, dtype, device and the
expected shape, and each state field one of their library and device (``kind_mismatch``); a mismatch
fails the check and its detail says which.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from array_api_compat import array_namespace, device

from ..spec.state import State
from .condition import condition_numbers
from .inputs import convert, namespace
from .suite import Case, load_cases, wrap_angle
from .tolerances import TINY, condition_scaled_error, contract_state_dtype, to_numpy, tolerance

CHECKS = ("output", "state", "resume", "from-state")


class ConformanceError(AssertionError):
    """Raised by ``check`` when a case fails; the message names every failing case and check."""

    def __init__(self, report: Report) -> None:
        super().__init__(report.summary())
        self.report = report


@dataclass(frozen=True)
class Result:
    """One check of one case: the error, the tolerance it is held to, and what went wrong if anything."""

    case: str
    check: str
    error: float
    tolerance: float
    detail: str = ""

    @property
    def passed(self) -> bool:
        return self.error <= self.tolerance

    def describe(self) -> str:
        verdict = "ok" if self.passed else "FAIL"
        text = (
            f"{self.case} [{self.check}]: error {self.error:.3e} (tolerance {self.tolerance:.1e}) {verdict}"
        )
        return f"{text}: {self.detail}" if self.detail else text


@dataclass(frozen=True)
class Report:
    """Every ``Result`` of a ``check`` run, with the dtype and namespace it ran on."""

    results: tuple[Result, ...]
    dtype: str
    library: str

    @property
    def passed(self) -> bool:
        return all(result.passed for result in self.results)

    @property
    def failures(self) -> list[Result]:
        return [result for result in self.results if not result.passed]

    @property
    def failed_cases(self) -> list[str]:
        """Names of the failing cases, each once, in case order."""
        return list(dict.fromkeys(result.case for result in self.failures))

    def worst(self, check: str | None = None) -> Result | None:
        """The result with the largest error (among those of ``check``)."""
        chosen = [r for r in self.results if check is None or r.check == check]
        return max(chosen, key=lambda r: r.error / r.tolerance, default=None)

    def summary(self) -> str:
        cases = len({result.case for result in self.results})
        head = f"{self.library} {self.dtype}: "
        if self.passed:
            return head + f"all {cases} cases pass ({len(self.results)} checks)"
        lines = [head + f"{len(self.failed_cases)} of {cases} cases fail: {', '.join(self.failed_cases)}"]
        lines += ["  " + result.describe() for result in self.failures]
        return "\n".join(lines)

    def raise_for_failures(self) -> None:
        if not self.passed:
            raise ConformanceError(self)

    def __str__(self) -> str:
        return self.summary()


def check(
    fn: Callable[..., Any],
    cases: Iterable[Case] | Iterable[str] | None = None,
    dtype: str = "float64",
    *,
    xp: Any = "numpy",
    checks: Sequence[str] = CHECKS,
    raise_on_failure: bool = True,
    state_dtype: str | None = None,
) -> Report:
    """Run ``fn`` on the conformance ``cases`` (default: all shipped) and compare with their outputs.

    ``fn`` has the signature of ``sympow.attention`` (bind ``form``, ``backend`` and the like with
    ``functools.partial``; wrap another layout with ``adapt_layout``). ``xp`` is the array namespace (a
    module or "numpy", "torch", "jax", "array_api_strict") the inputs are given in, ``dtype`` their dtype
    name; the tolerance is ``tolerance(dtype)``, and each output row's error is measured against its own
    tolerance max(tau, gamma u c_i) (math.md 9: ``condition_scaled_error``, c_i the case's state-path
    condition number, u that of ``state_dtype``, by default the contract's: the inputs' accumulation
    dtype up to degree 4, float64 above). ``checks`` picks among "output", "state", "resume" and
    "from-state" (module docstring): an implementation without a state passes ``checks=("output",)``;
    "state" and "from-state" need states with the fields of ``sympow.State`` in its layout.

    An exception raised by ``fn`` counts as a failure of that check (error inf). Returns the ``Report``;
    raises ``ConformanceError`` (an AssertionError naming each failing case) when a check fails and
    ``raise_on_failure`` is true.
    """
    unknown = [name for name in checks if name not in CHECKS]
    if unknown or not checks:
        raise ValueError(f"checks must be a non-empty subset of {CHECKS}, got {tuple(checks)!r}")
    tolerance(dtype)  # an unknown dtype fails here, naming the known ones
    module = namespace(xp)
    selected = _cases(cases)
    results: list[Result] = []
    for case in selected:
        results += _check_case(fn, case, module, dtype, tuple(checks), state_dtype)
    report = Report(tuple(results), dtype, getattr(module, "__name__", str(module)))
    if raise_on_failure:
        report.raise_for_failures()
    return report


def _cases(cases: Iterable[Case] | Iterable[str] | None) -> list[Case]:
    if cases is None:
        return load_cases()
    if isinstance(cases, Case):
        return [cases]
    if isinstance(cases, str):
        return load_cases(names=[cases])
    chosen = list(cases)
    names = [item for item in chosen if isinstance(item, str)]
    by_name = {case.name: case for case in load_cases(names=names)} if names else {}
    out = []
    for item in chosen:
        if isinstance(item, str):
            out.append(by_name[item])
        elif isinstance(item, Case):
            out.append(item)
        else:
            raise TypeError(f"cases must hold Case objects or case names, got {type(item).__name__}")
    if not out:
        raise ValueError("cases must not be empty")
    return out


def _state_dtype(dtype: str) -> str:
    """States are handed over in the run's dtype, or float32 for the half-precision dtypes."""
    return dtype if dtype in ("float32", "float64") else "float32"


def case_state(case: Case, which: str, xp: Any, dtype: str) -> State:
    """The case's state (after ``split`` tokens, at the end, or for a packed case the ``"initial"`` ones)
    as a ``sympow.State`` of ``xp`` arrays, with log_scale = 0 (the stored sums are the true sums)."""
    S, z, mu = case.initial() if which == "initial" else case.state(which)
    arrays = {"S": S, "z": z, "mu": mu, "log_scale": np.zeros(S.shape[:-2])}
    converted = convert(arrays, xp, _state_dtype(dtype))
    return State(S=converted["S"], z=converted["z"], mu=converted["mu"], log_scale=converted["log_scale"])


def _library(x: Any) -> str:
    """The array library of ``x`` ("numpy", "torch", "jax", "array_api_strict", ...), or its type's name
    when it is no array of the standard."""
    try:
        name = array_namespace(x).__name__
    except TypeError:
        return f"not an array ({type(x).__name__})"
    return name.removeprefix("array_api_compat.").split(".")[0]


def kind_mismatch(got: Any, like: Any, shape: tuple[int, ...], what: str, *, dtype: bool = True) -> str:
    """The empty string when ``got`` is an array of the library, device (and, with ``dtype``, dtype) of
    ``like`` with ``shape``; else what differs, e.g. "output library numpy, expected torch". An
    implementation that hands back NumPy arrays for torch inputs, or float64 for float32 inputs, is wrong
    even where the numbers agree."""
    library, expected_library = _library(got), _library(like)
    if library != expected_library:
        return f"{what} library {library}, expected {expected_library} like the inputs"
    if dtype and got.dtype != like.dtype:
        return f"{what} dtype {got.dtype}, expected {like.dtype} like the inputs"
    if tuple(got.shape) != tuple(shape):
        return f"{what} shape {tuple(got.shape)}, expected {tuple(shape)}"
    if device(got) != device(like):
        return f"{what} device {device(got)}, expected {device(like)} like the inputs"
    return ""


def _call(fn: Callable[..., Any], case: Case, arrays: dict[str, Any], **extra: Any) -> Any:
    return fn(
        arrays["q"],
        arrays["k"],
        arrays["v"],
        **case.options,
        log_gate=arrays["log_gate"],
        proportions=arrays["proportions"],
        rotary=arrays["rotary"],
        **extra,
    )


def tokens(inputs: dict[str, Any], start: int, stop: int | None) -> dict[str, Any]:
    """The inputs of tokens start..stop-1 (q, k, v, rotary on axis -2; gates, proportions on axis -1)."""

    def cut(value: Any, axis: int) -> Any:
        if value is None:
            return None
        if isinstance(value, tuple):
            return tuple(cut(item, axis) for item in value)
        index = [slice(None)] * value.ndim
        index[value.ndim + axis] = slice(start, stop)
        return value[tuple(index)]

    axes = {"q": -2, "k": -2, "v": -2, "rotary": -2, "log_gate": -1, "proportions": -1}
    return {key: cut(value, axes[key]) for key, value in inputs.items()}


def output_error(
    y: Any,
    case: Case,
    rows: slice = slice(None),
    *,
    dtype: str = "float64",
    condition: Any = None,
    state_dtype: str | None = None,
) -> tuple[float, str]:
    """(error, detail) of an output against the case's y[..., rows, :], by the tolerance table's measure,
    each row against its own tolerance where ``condition`` (c_i [..., rows]) is given."""
    expected = case.y[..., rows, :]
    got = to_numpy(y)
    if got.shape != expected.shape:
        return math.inf, f"output shape {got.shape}, expected {expected.shape}"
    if not np.isfinite(got).all():
        return math.inf, "non-finite output entries"
    error = condition_scaled_error(
        got,
        expected,
        case.arrays["v"],
        normalize=case.normalize,
        dtype_name=dtype,
        condition=condition,
        state_dtype_name=state_dtype,
    )
    if error == 0.0:
        return error, ""
    worst = np.unravel_index(np.argmax(np.abs(got - expected)), got.shape)
    return (
        error,
        f"worst entry {tuple(int(i) for i in worst)}: got {got[worst]:.6g}, expected {expected[worst]:.6g}",
    )


def state_error(state: Any, case: Case, which: str = "final", like: Any = None) -> tuple[float, str]:
    """(error, detail): the largest of the relative errors of the true S and z and the angle error of mu.
    With ``like`` (an input array), each field must also be an array of its library and device."""
    S_ref, z_ref, mu_ref = case.state(which)
    try:
        if like is not None:
            for field in ("S", "z", "mu", "log_scale"):
                x = getattr(state, field)
                wrong = "" if x is None else kind_mismatch(x, like, x.shape, f"state {field}", dtype=False)
                if wrong:
                    return math.inf, wrong
        S, z = (to_numpy(x) for x in (state.S, state.z))
        log_scale = to_numpy(state.log_scale)
        mu = None if state.mu is None else to_numpy(state.mu)
    except AttributeError as error:
        return math.inf, f"the state has no field {error.name!r} of sympow.State"
    factor = np.exp(log_scale)
    parts = {"S": (S * factor[..., None, None], S_ref), "z": (z * factor[..., None], z_ref)}
    errors = {}
    for key, (got, expected) in parts.items():
        if got.shape != expected.shape:
            return math.inf, f"state {key} shape {got.shape}, expected {expected.shape}"
        if not np.isfinite(got).all():
            return math.inf, f"non-finite state {key} entries"
        scale = float(np.max(np.abs(expected))) if expected.size else 0.0
        errors[key] = float(np.max(np.abs(got - expected), initial=0.0)) / max(scale, TINY)
    if (mu is None) != (mu_ref is None):
        return (
            math.inf,
            f"state mu is {'None' if mu is None else 'set'}, expected {'None' if mu_ref is None else 'set'}",
        )
    if mu is not None:
        if mu.shape != mu_ref.shape:
            return math.inf, f"state mu shape {mu.shape}, expected {mu_ref.shape}"
        errors["mu"] = float(np.max(np.abs(wrap_angle(mu - mu_ref)), initial=0.0))
    key = max(errors, key=errors.__getitem__)
    return errors[key], f"worst field {key}" if errors[key] > 0 else ""


def _concat(first: Any, second: Any) -> np.ndarray:
    return np.concatenate([to_numpy(first), to_numpy(second)], axis=-2)


def case_condition(case: Case, initial_state: State | None = None, rows: slice = slice(None)) -> np.ndarray:
    """The state-path condition numbers c_i of the case's rows (math.md 9), from its float64 inputs; of
    each sequence on its own for a packed case (``initial_state`` then holds one state per sequence)."""
    inputs = tokens(case.inputs, rows.start or 0, rows.stop)
    if case.cu_seqlens is not None:
        from .packed import per_sequence

        return per_sequence(condition_numbers, inputs, case.cu_seqlens, initial_state=initial_state,
                            token_axis=-1, **case.options)[0]  # fmt: skip
    return condition_numbers(
        inputs["q"], inputs["k"], inputs["v"], **case.options, log_gate=inputs["log_gate"],
        proportions=inputs["proportions"], rotary=inputs["rotary"], initial_state=initial_state,
    )  # fmt: skip


def _check_case(
    fn: Callable[..., Any],
    case: Case,
    xp: Any,
    dtype: str,
    checks: tuple[str, ...],
    state_dtype: str | None = None,
) -> list[Result]:
    tol = tolerance(dtype)
    arrays = convert(case.inputs, xp, dtype)
    if case.cu_seqlens is not None:
        return _check_packed_case(fn, case, xp, dtype, arrays, checks, state_dtype)
    results = []
    highest = case.power if case.kernel in ("sympow", "taylor") else 1
    path = contract_state_dtype(dtype, highest_degree=highest, state_dtype=state_dtype)
    condition = case_condition(case)

    def output_error_of(y: Any, rows: slice = slice(None), c: Any = condition) -> tuple[float, str]:
        return output_error(
            y, case, rows, dtype=dtype, condition=c[..., rows] if c is condition else c, state_dtype=path
        )

    def wrong_kind(y: Any, start: int, stop: int | None) -> tuple[float, str] | None:
        shape = case.y[..., start:stop, :].shape
        detail = kind_mismatch(y, arrays["q"], shape, "output")
        return (math.inf, detail) if detail else None

    def record(name: str, measure: Callable[[], tuple[float, str]]) -> None:
        try:
            error, detail = measure()
        except Exception as exc:  # a failure of fn is a failure of the check, reported with the case
            error, detail = math.inf, f"raised {type(exc).__name__}: {exc}"
        results.append(Result(case.name, name, error, tol, detail))

    wants_state = "state" in checks
    if "output" in checks or wants_state:
        full: dict[str, Any] = {}

        def run_full() -> tuple[float, str]:
            out = _call(fn, case, arrays, return_state=True) if wants_state else _call(fn, case, arrays)
            y, full["state"] = out if wants_state else (out, None)
            return wrong_kind(y, 0, None) or output_error_of(y)

        record("output", run_full)
        if wants_state:
            record("state", lambda: state_error(full["state"], case, like=arrays["q"]) if "state" in full
                   else _missing())  # fmt: skip
    if case.split is None:
        return results
    split = case.split
    if "resume" in checks:

        def run_resume() -> tuple[float, str]:
            y1, state = _call(fn, case, tokens(arrays, 0, split), return_state=True)
            extra = {"initial_state": state}
            if wants_state:
                y2, final = _call(fn, case, tokens(arrays, split, None), return_state=True, **extra)
            else:
                y2, final = _call(fn, case, tokens(arrays, split, None), **extra), None
            wrong = wrong_kind(y1, 0, split) or wrong_kind(y2, split, None)
            if wrong:
                return wrong
            error, detail = output_error_of(_concat(y1, y2))
            if final is not None:
                s_error, s_detail = state_error(final, case, like=arrays["q"])
                if s_error > error:
                    error, detail = s_error, f"final state after resuming: {s_detail}"
            return error, detail

        record("resume", run_resume)
    if "from-state" in checks:

        def run_from_state() -> tuple[float, str]:
            state = case_state(case, "split", xp, dtype)
            y = _call(fn, case, tokens(arrays, split, None), initial_state=state)
            wrong = wrong_kind(y, split, None)
            if wrong:
                return wrong
            c = case_condition(case, case_state(case, "split", np, "float64"), slice(split, None))
            return output_error_of(y, slice(split, None), c)

        record("from-state", run_from_state)
    return results


def _check_packed_case(
    fn: Callable[..., Any], case: Case, xp: Any, dtype: str, arrays: dict[str, Any], checks: tuple[str, ...],
    state_dtype: str | None,
) -> list[Result]:  # fmt: skip
    """The checks of a packed case (module doc): "output" and "state" from empty states, or "from-state"
    (y and the final states) from the case's initial ones."""
    library = namespace(xp)
    offsets = library.asarray(np.asarray(case.cu_seqlens, dtype=np.int32))
    highest = case.power if case.kernel in ("sympow", "taylor") else 1
    path = contract_state_dtype(dtype, highest_degree=highest, state_dtype=state_dtype)
    resumed = case.initial() is not None
    start = case_state(case, "initial", xp, dtype) if resumed else None
    condition = case_condition(case, case_state(case, "initial", np, "float64") if resumed else None)
    names = ("from-state",) if resumed else ("output", "state")
    if not set(names) & set(checks):
        return []
    measured: dict[str, tuple[float, str]] = {}
    try:
        y, state = _call(fn, case, arrays, cu_seqlens=offsets, initial_state=start, return_state=True)
        detail = kind_mismatch(y, arrays["q"], case.y.shape, "output")
        y_error = (math.inf, detail) if detail else output_error(
            y, case, dtype=dtype, condition=condition, state_dtype=path
        )  # fmt: skip
        s_error = state_error(state, case, like=arrays["q"])
    except Exception as exc:  # a failure of fn is a failure of the check, reported with the case
        y_error = s_error = (math.inf, f"raised {type(exc).__name__}: {exc}")
    if resumed:
        measured["from-state"] = max(y_error, (s_error[0], f"final state: {s_error[1]}"), key=lambda r: r[0])
    else:
        measured["output"], measured["state"] = y_error, s_error
    tol = tolerance(dtype)
    return [
        Result(case.name, name, measured[name][0], tol, measured[name][1]) for name in names if name in checks
    ]


def _missing() -> tuple[float, str]:
    return math.inf, "no state: the call on the whole sequence failed"
