"""Cross-framework validation behind ``sympow validate``: every backend, form and variant against the
float64 reference.

For each available backend, each array library it takes that imports here (the reference takes them
all: numpy, torch, jax, array_api_strict, cupy), each dtype and each case (the plain kernels with gates,
rotary and proportions, and every named variant of ``sympow.variants.VARIANTS``), every form computes

    output   y of one call on the first s tokens (s = T // 2), returning its state
    resume   y of the other T - s tokens, resumed from that state

and both are compared with the reference: the "reference" backend, parallel form, NumPy float64, on the
same inputs rounded to the tested dtype. A packed case ("<kernel>/packed", math.md 10) packs N sequences
(an empty one and a one-token one among them) with ``cu_seqlens``: "output" is one packed call on the
first part of every sequence, "resume" a second packed call on the rest of each, resumed from the
per-sequence States of the first; the reference is the loop of separate calls on each whole sequence.
Errors are measured as in ``sympow.testing.tolerances`` (max |y - y_ref| over max |v| when normalised,
over max |y_ref| otherwise) and must not exceed
``tolerance(dtype)``; for the plain kernels each row is measured against its own tolerance
max(tau, gamma u c_i) with the state-path condition number c_i of math.md 9
(``condition_scaled_error``), which is the plain error on well-conditioned rows. ``validate`` returns
one ``Row`` per (backend, library, dtype, form, case), and ``summarize`` folds them per (backend,
library, dtype, form). The command line only prints them.
"""

from __future__ import annotations

import importlib
import importlib.util
import itertools
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import backends as backend_registry
from .api import attention
from .testing.condition import condition_numbers
from .testing.inputs import convert, make_inputs
from .testing.tolerances import condition_scaled_error, contract_state_dtype, to_numpy, tolerance

FORMS = ("parallel", "recurrent", "chunked")
NAMESPACES = {
    "numpy": "numpy",
    "torch": "torch",
    "jax": "jax.numpy",
    "array_api_strict": "array_api_strict",
    "cupy": "cupy",
}
DEFAULT_DTYPES = ("float64",)
PER_TOKEN_PARAMETERS = ("gate_logits", "rotary_logits")  # variant keywords with a token axis (last)

KERNELS = {
    "sympow-p2": {"kernel": "sympow", "power": 2},
    "sympow-p4": {"kernel": "sympow", "power": 4},
    "taylor-p2": {"kernel": "taylor", "power": 2},
    "relu": {"kernel": "relu"},
    "identity": {"kernel": "identity", "normalize": False},
}
WEIGHTS = {
    "plain": {},
    "gate+rotary": {"gate": True, "rotary": True},
    "proportions": {"proportions": True},
    "gate+proportions+rotary": {"gate": True, "proportions": True, "rotary": True, "layout": "interleaved"},
}


@dataclass(frozen=True)
class Case:
    """One validated call: a plain kernel with some weights, or a named variant."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)
    gate: bool = False
    proportions: bool = False
    rotary: bool = False
    layout: str = "half"
    variant: str | None = None
    packed: bool = False

    @property
    def normalize(self) -> bool:
        return bool(self.options.get("normalize", True))


@dataclass(frozen=True)
class Row:
    """The result of one case in one form on one backend, library and dtype.

    ``status`` is "pass", "fail" or "skip" (with the reason in ``detail``); the errors are None where not
    measured.
    """

    backend: str
    library: str
    dtype: str
    form: str
    case: str
    output_error: float | None
    resume_error: float | None
    tolerance: float | None
    status: str
    detail: str = ""

    @property
    def passed(self) -> bool:
        return self.status != "fail"

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


@dataclass(frozen=True)
class Summary:
    """Rows folded per (backend, library, dtype, form): the largest errors and the case they occur in."""

    backend: str
    library: str
    dtype: str
    form: str
    cases: int
    failed: int
    skipped: int
    output_error: float | None
    resume_error: float | None
    tolerance: float | None
    worst_case: str
    status: str
    detail: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


def plain_cases(thorough: bool = False) -> list[Case]:
    """Each kernel of KERNELS with every weight at once (gates, proportions, interleaved rotary), and
    sympow p=2 also without weights; ``thorough``: every kernel with every combination of WEIGHTS.

    The default set is small because jit-compiling libraries (JAX above all) compile once per case, form
    and shape, which dominates the run time."""
    cases = []
    for kernel, options in KERNELS.items():
        for weights, flags in WEIGHTS.items():
            if (
                thorough
                or weights == "gate+proportions+rotary"
                or (kernel, weights) == ("sympow-p2", "plain")
            ):
                cases.append(Case(f"{kernel}/{weights}", dict(options), **flags))
    for kernel, options in KERNELS.items():  # packed sequences, with every weight
        flags = WEIGHTS["gate+proportions+rotary"]
        cases.append(Case(f"{kernel}/packed", dict(options), packed=True, **flags))
    return cases


def variant_names() -> list[str]:
    """The named variants that exist (``sympow.variants.VARIANTS``), or none before that module exists."""
    try:
        module = importlib.import_module("sympow.variants")
    except ModuleNotFoundError:
        return []
    return sorted(getattr(module, "VARIANTS", {}))


def variant_cases(names: Iterable[str] | None = None) -> list[Case]:
    known = variant_names()
    chosen = known if names is None else list(names)
    unknown = [name for name in chosen if name not in known]
    if unknown:
        raise ValueError(f"variants must be among {known}, got {unknown}")
    return [Case(f"variant:{name}", variant=name) for name in chosen]


def library_available(library: str) -> str | None:
    """None if the array library imports here, else why not."""
    module = NAMESPACES.get(library, library)
    root = module.split(".")[0]
    if importlib.util.find_spec(root) is None:
        return f"{root} is not installed"
    if library == "cupy":
        try:
            import cupy

            cupy.cuda.runtime.getDeviceCount()
        except Exception as error:  # no driver or no device: CuPy imports but cannot run
            return f"cupy cannot reach a GPU ({type(error).__name__})"
    return None


def dtype_available(library: str, dtype: str) -> str | None:
    """None if ``library`` holds ``dtype`` here, else why not."""
    xp = importlib.import_module(NAMESPACES[library])
    if not hasattr(xp, dtype):
        return f"{library} has no {dtype}"
    if library == "jax" and dtype == "float64":
        import jax

        if not jax.config.jax_enable_x64:
            return "JAX float64 needs jax_enable_x64 (sympow validate enables it)"
    return None


def libraries_of(entry: Any) -> list[str]:
    """The array libraries a backend (an ``Availability``) takes, among those validate knows."""
    if "*" in entry.libraries:
        return list(NAMESPACES)
    return [library for library in entry.libraries if library in NAMESPACES]


# ----------------------------------------------------------------------------------------------------------
# Inputs and the reference


def _inputs(case: Case, batch: tuple[int, ...], T: int, d: int, e: int, seed: int) -> dict[str, Any]:
    arrays = make_inputs(
        batch=batch,
        T=T,
        d=d,
        e=e,
        seed=seed,
        gate=case.gate,
        rotary=case.rotary,
        proportions=case.proportions,
    )
    if case.variant is not None:
        from .variants import variant_parameters

        arrays["parameters"] = variant_parameters(case.variant, batch, T, d, seed)
    return arrays


def _to_library(value: Any, xp: Any, dtype: str) -> Any:
    """NumPy arrays (nested in tuples, lists or dicts) as ``xp`` arrays of ``dtype``; others unchanged."""
    if isinstance(value, np.ndarray):
        return convert({"x": value}, xp, dtype)["x"]
    if isinstance(value, dict):
        return {key: _to_library(item, xp, dtype) for key, item in value.items()}
    if isinstance(value, (tuple, list)):
        return tuple(_to_library(item, xp, dtype) for item in value)
    return value


def _to_float64(value: Any) -> Any:
    """The same structure with every array as float64 NumPy (the values the tested dtype holds)."""
    if isinstance(value, dict):
        return {key: _to_float64(item) for key, item in value.items()}
    if isinstance(value, (tuple, list)):
        return tuple(_to_float64(item) for item in value)
    if value is None or isinstance(value, (int, float, str, bool)):
        return value
    return to_numpy(value)


def _call(
    case: Case, arrays: dict[str, Any], attention_fn: Callable[..., Any] = attention, **options: Any
) -> Any:
    if case.variant is not None:
        from .variants import VARIANTS

        return VARIANTS[case.variant](
            arrays["q"], arrays["k"], arrays["v"], **arrays["parameters"], **options
        )
    return attention_fn(
        arrays["q"],
        arrays["k"],
        arrays["v"],
        **case.options,
        log_gate=arrays.get("log_gate"),
        proportions=arrays.get("proportions"),
        rotary=arrays.get("rotary"),
        rotary_layout=case.layout,
        **options,
    )


def _tokens(arrays: dict[str, Any], start: int, stop: int | None, batch: tuple[int, ...], T: int) -> dict:
    """Tokens start..stop-1 of every per-token input (and per-token variant parameter)."""

    def cut(x: Any, axis: int) -> Any:
        if x is None:
            return None
        if isinstance(x, tuple):
            return tuple(cut(item, axis) for item in x)
        index = [slice(None)] * x.ndim
        index[x.ndim + axis] = slice(start, stop)
        return x[tuple(index)]

    axes = {"q": -2, "k": -2, "v": -2, "rotary": -2, "log_gate": -1, "proportions": -1}
    out = {key: cut(value, axes[key]) if key in axes else value for key, value in arrays.items()}
    if "parameters" in arrays:
        out["parameters"] = {
            key: cut(value, -1) if _per_token(key, value, batch, T) else value
            for key, value in arrays["parameters"].items()
        }
    return out


def _per_token(name: str, value: Any, batch: tuple[int, ...], T: int) -> bool:
    if name in PER_TOKEN_PARAMETERS:
        return True
    shape = getattr(value, "shape", None)
    return shape is not None and tuple(shape) == (*batch, T)


# ----------------------------------------------------------------------------------------------------------
# The run


@dataclass(frozen=True)
class Settings:
    """Shapes of the validated calls: T tokens, head size d, value size e, batch axes, the split point s
    of the resume check, the chunk size of the chunked form, and the input seed."""

    T: int = 64
    d: int = 8
    e: int = 4
    batch: tuple[int, ...] = (2,)
    chunk_size: int = 12
    seed: int = 0

    @property
    def split(self) -> int | None:
        """T // 2 (None when T = 1): both halves then have one shape, which halves the compilations of
        jit-compiling backends; with the default chunk size 12 and T = 64 the split falls inside a chunk
        and the last chunk is partial."""
        if self.T < 2:
            return None
        return self.T // 2


@dataclass
class Plan:
    """What ``validate`` will run: (backend, library, reason it cannot run or None) and the cases."""

    targets: list[tuple[str, str, str | None]]
    dtypes: list[str]
    cases: list[Case]
    settings: Settings

    @property
    def steps(self) -> int:
        return len(self.targets) * len(self.dtypes) * len(self.cases)


def plan(
    backends: Sequence[str] | None = None,
    variants: Sequence[str] | None = None,
    dtypes: Sequence[str] = DEFAULT_DTYPES,
    settings: Settings | None = None,
    *,
    kernels: bool = True,
    thorough: bool = False,
) -> Plan:
    """The targets and cases of a validation run.

    ``backends``: names (default: every registered backend; those that cannot run here are reported as
    skipped). ``variants``: names of ``sympow.variants.VARIANTS`` (default all; ``[]`` for none).
    ``kernels``: whether to include the plain-kernel cases; ``thorough``: all weight combinations.
    Array libraries that are not installed are left out for backends that take any library.
    """
    settings = settings or Settings()
    for dtype in dtypes:
        tolerance(dtype)
    entries = {entry.name: entry for entry in backend_registry.available()}
    names = list(entries) if backends is None else list(backends)
    unknown = [name for name in names if name not in entries]
    if unknown:
        raise ValueError(f"backends must be among {sorted(entries)}, got {unknown}")
    targets: list[tuple[str, str, str | None]] = []
    for name in names:
        entry = entries[name]
        if not entry.available:
            targets.append((name, "-", entry.reason or "unavailable"))
            continue
        for library in libraries_of(entry):
            reason = library_available(library)
            if reason is None or "*" not in entry.libraries:
                targets.append((name, library, reason))
    cases = (plain_cases(thorough) if kernels else []) + variant_cases(variants)
    return Plan(targets, list(dtypes), cases, settings)


def validate(
    backends: Sequence[str] | None = None,
    variants: Sequence[str] | None = None,
    dtypes: Sequence[str] = DEFAULT_DTYPES,
    settings: Settings | None = None,
    *,
    kernels: bool = True,
    thorough: bool = False,
    forms: Sequence[str] = FORMS,
    advance: Callable[[str], None] | None = None,
    workers: int = 1,
) -> list[Row]:
    """Rows of a validation run (see the module docstring); ``advance(label)`` is called once per
    (target, dtype, case) step, for progress bars."""
    run_plan = plan(backends, variants, dtypes, settings, kernels=kernels, thorough=thorough)
    return run(run_plan, forms=forms, advance=advance, workers=workers)


def run(
    run_plan: Plan,
    *,
    forms: Sequence[str] = FORMS,
    advance: Callable[[str], None] | None = None,
    workers: int = 1,
) -> list[Row]:
    """Execute a ``Plan``; with ``workers`` > 1 its targets run in that many spawned processes (the run is
    CPU-bound, and jit-compiling libraries spend most of it compiling)."""
    if workers <= 1 or len(run_plan.targets) <= 1:
        rows: list[Row] = []
        for target in run_plan.targets:
            rows += _run_target(target, run_plan, forms, advance)
        return rows
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # The slowest targets (JAX compiles every case) start first.
    order = sorted(range(len(run_plan.targets)), key=lambda i: -_expected_cost(run_plan.targets[i]))
    results: dict[int, list[Row]] = {}
    context = multiprocessing.get_context("spawn")  # fork is unsafe once torch or jax threads exist
    with ProcessPoolExecutor(
        max_workers=workers, mp_context=context, initializer=_worker_start, initargs=(_jax_float64(),)
    ) as pool:
        futures = {
            pool.submit(_run_target, run_plan.targets[i], run_plan, tuple(forms), None): i for i in order
        }
        from concurrent.futures import as_completed

        for future in as_completed(futures):
            index = futures[future]
            results[index] = future.result()
            if advance is not None:
                backend, library, _ = run_plan.targets[index]
                for _ in range(len(run_plan.dtypes) * len(run_plan.cases)):
                    advance(f"{backend} {library}")
    return [row for index in range(len(run_plan.targets)) for row in results[index]]


def _expected_cost(target: tuple[str, str, str | None]) -> int:
    backend, library, reason = target
    if reason is not None:
        return 0
    return {"jax": 10, "torch": 3, "array_api_strict": 2}.get(library, 1) + (backend != "reference")


def _jax_float64() -> bool:
    import sys

    jax = sys.modules.get("jax")
    return bool(jax is not None and jax.config.jax_enable_x64)


def _worker_start(jax_float64: bool) -> None:
    if jax_float64:
        import jax

        jax.config.update("jax_enable_x64", True)


def _run_target(
    target: tuple[str, str, str | None],
    run_plan: Plan,
    forms: Sequence[str],
    advance: Callable[[str], None] | None,
) -> list[Row]:
    """Every dtype and case of the plan on one (backend, library)."""
    backend, library, reason = target
    settings = run_plan.settings
    rows: list[Row] = []
    references: dict[tuple[str, str], tuple[Any, ...]] = {}
    for dtype in run_plan.dtypes:
        why = reason or dtype_available(library, dtype)
        for index, case in enumerate(run_plan.cases):
            if advance is not None:
                advance(f"{backend} {library} {dtype} {case.name}")
            if why is not None:
                rows += [
                    Row(backend, library, dtype, form, case.name, None, None, None, "skip", why)
                    for form in forms
                ]
                continue
            xp = importlib.import_module(NAMESPACES[library])
            inputs = _inputs(case, settings.batch, settings.T, settings.d, settings.e, settings.seed + index)
            arrays = _to_library(inputs, xp, dtype)
            key = (dtype, case.name)
            if key not in references and not case.packed:
                references[key] = _reference(case, _to_float64(arrays), settings)
            if case.packed:
                rows += [
                    _one_packed(case, inputs, xp, backend, library, dtype, form, settings) for form in forms
                ]
                continue
            for form in forms:
                rows.append(_one(case, arrays, references[key], backend, library, dtype, form, settings))
    return rows


def _reference(
    case: Case, arrays: dict[str, Any], settings: Settings
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(y, v, c) of the float64 reference on the rounded inputs: c the state-path condition numbers of
    math.md 9 for a plain kernel's case (None for a variant, whose attention inputs are its own)."""
    y = _call(case, arrays, form="parallel", backend="reference")
    c = None if case.variant is not None else _call(case, arrays, attention_fn=condition_numbers)
    return to_numpy(y), arrays["v"], c


def _one(
    case: Case,
    arrays: dict[str, Any],
    reference: tuple[np.ndarray, np.ndarray],
    backend: str,
    library: str,
    dtype: str,
    form: str,
    settings: Settings,
) -> Row:
    y_ref, v, condition = reference
    tol = tolerance(dtype)
    highest = case.options.get("power", 1) if case.options.get("kernel") in ("sympow", "taylor") else 1
    path = contract_state_dtype(dtype, highest_degree=highest)
    options = {"form": form, "chunk_size": settings.chunk_size, "backend": backend}
    refusal = f"backend {backend!r} cannot run this call"

    def error(y: Any, rows: slice) -> float:  # each row against max(tau, gamma u c_i), in units of tau
        return condition_scaled_error(
            y, y_ref[..., rows, :], v, normalize=case.normalize, dtype_name=dtype,
            condition=None if condition is None else condition[..., rows], state_dtype_name=path,
        )  # fmt: skip

    # Two calls (a third would cost one more compilation per case and form on jit-compiling backends):
    # the first s tokens from nothing, then the other T - s resumed from the state the first returned.
    try:
        s = settings.split
        if s is None:
            output, resume = error(_call(case, arrays, **options), slice(None)), None
        else:
            first = _tokens(arrays, 0, s, settings.batch, settings.T)
            rest = _tokens(arrays, s, None, settings.batch, settings.T)
            y1, state = _call(case, first, return_state=True, **options)
            output = error(y1, slice(0, s))
            resume = error(_call(case, rest, initial_state=state, **options), slice(s, None))
    except ValueError as exc:
        if str(exc).startswith(refusal):
            return Row(backend, library, dtype, form, case.name, None, None, tol, "skip", str(exc))
        return Row(backend, library, dtype, form, case.name, None, None, tol, "fail", _brief(exc))
    except Exception as exc:  # any other failure of the backend is reported, not raised
        return Row(backend, library, dtype, form, case.name, None, None, tol, "fail", _brief(exc))
    worst = max(output, resume if resume is not None else 0.0)
    status = "pass" if worst <= tol else "fail"
    detail = "" if status == "pass" else f"error {worst:.2e} exceeds {tol:.0e}"
    return Row(backend, library, dtype, form, case.name, output, resume, tol, status, detail)


PACKED_SEQUENCES = 6


def packed_layout(T: int, seed: int) -> tuple[list[int], list[int], list[int], list[int], list[int]]:
    """(offsets of the whole sequences, token indices of their first parts, of their second parts,
    offsets of the first parts, offsets of the second parts): ``PACKED_SEQUENCES`` sequences over T tokens,
    one of them empty and one of one token, each cut after half its tokens (rounded down)."""
    from .testing.packed import make_offsets

    if T < 2:
        whole = [0, 0, T]
    else:  # an empty sequence, one of one token, then the others over the T - 1 tokens left
        rest = make_offsets(T - 1, min(PACKED_SEQUENCES - 2, T - 1), seed=seed, empty=False)
        whole = [0, 0, 1, *(o + 1 for o in rest[1:])]
    first, second, first_offsets, second_offsets = [], [], [0], [0]
    for lo, hi in itertools.pairwise(whole):
        cut = lo + (hi - lo) // 2
        first += range(lo, cut)
        second += range(cut, hi)
        first_offsets.append(first_offsets[-1] + cut - lo)
        second_offsets.append(second_offsets[-1] + hi - cut)
    return whole, first, second, first_offsets, second_offsets


def _one_packed(
    case: Case, inputs: dict[str, Any], xp: Any, backend: str, library: str, dtype: str, form: str,
    settings: Settings,
) -> Row:  # fmt: skip
    """A packed case (module doc): two packed calls, the second resumed from the States of the first,
    against the loop of separate float64 reference calls on the whole sequences."""
    from .testing.packed import per_sequence

    tol = tolerance(dtype)
    whole, first, second, first_offsets, second_offsets = packed_layout(settings.T, settings.seed)
    rounded = _to_float64(_to_library(inputs, xp, dtype))
    plain = {key: rounded.get(key) for key in ("q", "k", "v", "log_gate", "proportions", "rotary")}
    options = {**case.options, "rotary_layout": case.layout}
    y_ref, _ = per_sequence(attention, plain, whole, form="parallel", backend="reference", **options)
    c = per_sequence(condition_numbers, plain, whole, token_axis=-1, **options)[0]
    highest = case.options.get("power", 1) if case.options.get("kernel") in ("sympow", "taylor") else 1
    path = contract_state_dtype(dtype, highest_degree=highest)
    call = {"form": form, "chunk_size": settings.chunk_size, "backend": backend, **options}

    def part(tokens: list[int]) -> dict[str, Any]:
        index = np.asarray(tokens, dtype=np.intp)
        axes = {"q": -2, "k": -2, "v": -2, "rotary": -2, "log_gate": -1}
        picked = {key: None if plain[key] is None else np.take(plain[key], index, axis=axis)
                  for key, axis in axes.items()}  # fmt: skip
        if plain["proportions"] is not None:
            picked["proportions"] = tuple(np.take(x, index, axis=-1) for x in plain["proportions"])
        return _to_library(picked, xp, dtype)

    def error(y: Any, tokens: list[int]) -> float:
        return condition_scaled_error(
            y, y_ref[..., tokens, :], plain["v"], normalize=case.normalize, dtype_name=dtype,
            condition=c[..., tokens], state_dtype_name=path,
        )  # fmt: skip

    refusal = f"backend {backend!r} cannot run this call"
    try:
        y1, state = attention(**part(first), cu_seqlens=first_offsets, return_state=True, **call)
        y2 = attention(**part(second), cu_seqlens=second_offsets, initial_state=state, **call)
        output, resume = error(y1, first), error(y2, second)
    except ValueError as exc:
        status = "skip" if str(exc).startswith(refusal) else "fail"
        return Row(backend, library, dtype, form, case.name, None, None, tol, status, _brief(exc))
    except Exception as exc:  # any other failure of the backend is reported, not raised
        return Row(backend, library, dtype, form, case.name, None, None, tol, "fail", _brief(exc))
    worst = max(output, resume)
    status = "pass" if worst <= tol else "fail"
    detail = "" if status == "pass" else f"error {worst:.2e} exceeds {tol:.0e}"
    return Row(backend, library, dtype, form, case.name, output, resume, tol, status, detail)


def _brief(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".splitlines()[0]
    return text if len(text) <= 200 else text[:197] + "..."


def summarize(rows: Iterable[Row]) -> list[Summary]:
    """One ``Summary`` per (backend, library, dtype, form), in the order first seen."""
    groups: dict[tuple[str, str, str, str], list[Row]] = {}
    for row in rows:
        groups.setdefault((row.backend, row.library, row.dtype, row.form), []).append(row)
    out = []
    for (backend, library, dtype, form), members in groups.items():
        measured = [row for row in members if row.status != "skip"]
        failed = [row for row in members if row.status == "fail"]
        skipped = len(members) - len(measured)

        def largest(attribute: str, chosen: list[Row] = measured) -> float | None:
            values = [getattr(row, attribute) for row in chosen if getattr(row, attribute) is not None]
            return max(values) if values else None

        def badness(row: Row) -> float:
            if row.status == "fail" and row.output_error is None:
                return math.inf
            return max(row.output_error or 0.0, row.resume_error or 0.0)

        worst = max(measured, key=badness, default=None)
        status = "fail" if failed else ("skip" if not measured else "pass")
        detail = ""
        if failed:
            detail = f"{len(failed)} failing, first {failed[0].case}: {failed[0].detail}"
        elif not measured:
            detail = members[0].detail
        elif skipped:
            detail = f"{skipped} case(s) skipped: {next(r.detail for r in members if r.status == 'skip')}"
        out.append(
            Summary(
                backend,
                library,
                dtype,
                form,
                len(members),
                len(failed),
                skipped,
                largest("output_error"),
                largest("resume_error"),
                members[0].tolerance,
                worst.case if worst else "-",
                status,
                detail,
            )
        )
    return out
