"""The conformance suite: the shipped cases, the checker, the adapters and the pytest helper.

The checker must pass a correct implementation written here from the maths (math.md sections 1-5),
the project's own backends, and fail, naming the case, each deliberately wrong implementation.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import sympow
from sympow.testing.adapters import adapt_layout
from sympow.testing.conformance import ConformanceError, check
from sympow.testing.generate_cases import case_specs, exact_in_all_dtypes, generate
from sympow.testing.packed import per_sequence
from sympow.testing.pytest_plugin import conformance_parametrize
from sympow.testing.suite import CASES_VERSION, cases_directory, load_cases
from sympow.testing.tolerances import tolerance
from tests.backends_here import general_backends
from tests.brute_force import brute_force

CASES = load_cases()


# ----------------------------------------------------------------------------------------------------------
# A correct implementation from the maths, with switchable mistakes


def rotate(x, mu, layout, sign=1.0):
    """R(sign * mu) x over the last axis: pairs (m, m + d/2) or (2m, 2m + 1)."""
    half = x.shape[-1] // 2
    first, second = (
        (np.arange(half), np.arange(half) + half)
        if layout == "half"
        else (np.arange(0, 2 * half, 2), np.arange(1, 2 * half, 2))
    )
    c, s = np.cos(sign * mu), np.sin(sign * mu)
    out = np.array(x)
    out[..., first] = x[..., first] * c - x[..., second] * s
    out[..., second] = x[..., first] * s + x[..., second] * c
    return out


def features(x, kernel, power, sigma, root=True):
    """phi(x) of math.md section 1 over the last axis; ``root=False`` drops the square root of the
    multinomial coefficients (a mistake)."""
    y = np.sqrt(np.longdouble(sigma)) * x
    if kernel == "relu":
        return np.maximum(y, 0.0)
    if kernel == "identity":
        return y
    degrees = [power] if kernel == "sympow" else range(power + 1)
    blocks = []
    for n in degrees:
        weight = 1.0 if kernel == "sympow" else 1.0 / math.factorial(n)
        for multiset in itertools.combinations_with_replacement(range(x.shape[-1]), n):
            counts = [len(list(group)) for _, group in itertools.groupby(multiset)]
            coefficient = math.factorial(n) / math.prod(math.factorial(a) for a in counts)
            value = np.ones(x.shape[:-1], dtype=x.dtype)
            for i in multiset:
                value = value * y[..., i]
            blocks.append(
                np.sqrt(np.longdouble(weight * coefficient)) * value
                if root
                else np.sqrt(np.longdouble(weight)) * coefficient * value
            )
    return np.stack(blocks, axis=-1)


def naive_attention(q, k, v, *, cu_seqlens=None, initial_state=None, return_state=False, **options):
    """``naive_one`` on each packed sequence of ``cu_seqlens`` (the loop of separate calls of math.md 10),
    or on the whole sequence."""
    if cu_seqlens is None:
        return naive_one(q, k, v, initial_state=initial_state, return_state=return_state, **options)
    per_token = {name: options.pop(name, None) for name in ("log_gate", "proportions", "rotary")}
    inputs = {"q": q, "k": k, "v": v, **per_token}
    y, state = per_sequence(naive_one, inputs, np.asarray(cu_seqlens).tolist(), initial_state=initial_state,
                            return_state=return_state, **options)  # fmt: skip
    return (y, state) if return_state else y


def naive_one(
    q,
    k,
    v,
    *,
    kernel="sympow",
    power=2,
    scale=None,
    log_gate=None,
    proportions=None,
    rotary=None,
    rotary_layout="half",
    normalize=True,
    eps=0.0,
    initial_state=None,
    return_state=False,
    mistake=None,
):
    """The recurrence of math.md section 5, token by token, in NumPy long double: phi(q).phi(k) sums terms
    of both signs far larger than (q.k)^p, which float64 features lose for p = 4 (about 1e-8). The
    output is returned in the inputs' dtype, as ``check`` requires."""
    dtype = np.asarray(q).dtype
    q, k, v = (np.asarray(x, dtype=np.longdouble) for x in (q, k, v))
    T, d, e = q.shape[-2], q.shape[-1], v.shape[-1]
    sigma = d**-0.5 if scale is None else scale
    leading = [q.shape[:-2], k.shape[:-2], v.shape[:-2]]
    if log_gate is not None:
        leading.append(log_gate.shape[:-1])
    if proportions is not None:
        leading += [proportions[0].shape[:-1], proportions[1].shape[:-1]]
    if rotary is not None:
        leading.append(rotary.shape[:-2])
    if initial_state is not None:
        leading.append(np.shape(initial_state.log_scale))
    batch = np.broadcast_shapes(*leading)
    q, k = np.broadcast_to(q, (*batch, T, d)), np.broadcast_to(k, (*batch, T, d))
    v = np.broadcast_to(v, (*batch, T, e))
    mu = None
    if initial_state is not None and initial_state.mu is not None:
        mu = np.broadcast_to(np.asarray(initial_state.mu, dtype=np.float64), (*batch, d // 2))
    if rotary is not None or mu is not None:
        steps = (
            np.zeros((*batch, T, d // 2)) if rotary is None else np.broadcast_to(rotary, (*batch, T, d // 2))
        )
        angles = np.cumsum(steps, axis=-2) + (0.0 if mu is None else mu[..., None, :])
        sign = -1.0 if mistake == "rotary sign" else 1.0
        q, k = rotate(q, angles, rotary_layout, sign), rotate(k, angles, rotary_layout, sign)
        mu = angles[..., -1, :]
    root = mistake != "no square root"
    fq, fk = features(q, kernel, power, sigma, root), features(k, kernel, power, sigma, root)
    if proportions is not None:
        a, b = (np.broadcast_to(x, (*batch, T)) for x in proportions)
        fq = np.concatenate(
            [np.cos(np.pi * a / 2)[..., None] * fq, np.sin(np.pi * a / 2)[..., None] * fq], -1
        )
        fk = np.concatenate(
            [np.cos(np.pi * b / 2)[..., None] * fk, np.sin(np.pi * b / 2)[..., None] * fk], -1
        )
    size = fk.shape[-1]
    S, z = np.zeros((*batch, size, e), dtype=q.dtype), np.zeros((*batch, size), dtype=q.dtype)
    if initial_state is not None:
        factor = np.exp(np.asarray(initial_state.log_scale, dtype=np.float64))
        S = S + np.asarray(initial_state.S) * factor[..., None, None]
        if mistake != "drop z":
            z = z + np.asarray(initial_state.z) * factor[..., None]
    gates = np.zeros((*batch, T)) if log_gate is None else np.broadcast_to(log_gate, (*batch, T))
    y = np.zeros((*batch, T, e), dtype=q.dtype)
    for t in range(T):
        gamma = np.exp(gates[..., t])
        update = fk[..., t, :, None] * v[..., t, None, :]
        if mistake == "gate on own key":
            S, z = gamma[..., None, None] * (S + update), gamma[..., None] * (z + fk[..., t, :])
        else:
            S, z = gamma[..., None, None] * S, gamma[..., None] * z
            if mistake != "shifted mask":
                S, z = S + update, z + fk[..., t, :]
        numerator = np.einsum("...f,...fe->...e", fq[..., t, :], S)
        if normalize:
            denominator = np.einsum("...f,...f->...", fq[..., t, :], z)[..., None] + eps
            safe = np.where(denominator == 0, 1.0, denominator)
            numerator = np.where(denominator == 0, 0.0, numerator / safe)
        y[..., t, :] = numerator
        if mistake == "shifted mask":
            S, z = S + update, z + fk[..., t, :]
    y, S, z = np.asarray(y, dtype=dtype), np.asarray(S, dtype=np.float64), np.asarray(z, dtype=np.float64)
    if not return_state:
        return y
    return y, sympow.State(S=S, z=z, mu=mu, log_scale=np.zeros(batch))


# ----------------------------------------------------------------------------------------------------------
# The shipped cases


def test_regeneration_is_bit_for_bit(tmp_path):
    """Two regenerations give the same bytes; the shipped arrays equal a regeneration to float64 rounding
    (the bytes themselves follow the reference's rounding order, which may change between versions)."""
    first = generate(tmp_path / "first")
    second = generate(tmp_path / "second")
    assert [p.name for p in first] == [p.name for p in second]
    for a, b in zip(first, second, strict=True):
        assert a.read_bytes() == b.read_bytes(), f"{a.name}: two regenerations differ"
    regenerated = next(p for p in first if p.suffix == ".npz")
    with np.load(regenerated) as fresh, np.load(cases_directory() / regenerated.name) as shipped:
        assert sorted(fresh.files) == sorted(shipped.files)
        for name in fresh.files:
            assert fresh[name].shape == shipped[name].shape, name
            scale = max(float(np.max(np.abs(shipped[name]), initial=0.0)), 1e-300)
            error = float(np.max(np.abs(fresh[name] - shipped[name]), initial=0.0)) / scale
            assert error <= tolerance("float64"), f"{name}: shipped differs from regenerated by {error:.2e}"


def test_case_outputs_equal_the_definition():
    """The stored float64 outputs agree with the O(T^2) double loop of tests/brute_force.py (a packed case:
    on each of its slices). The cases whose sequences start from stored states are held instead to the
    recurrence written here from the maths (``naive_attention``, test_checker_passes_...), as brute_force
    takes no state."""
    for case in CASES:
        if case.initial() is not None:
            continue
        if case.cu_seqlens is None:
            expected = brute_force(**case.inputs, **case.options)
        else:
            expected, _ = per_sequence(brute_force, case.inputs, case.cu_seqlens, **case.options)
        np.testing.assert_allclose(
            case.y, expected, rtol=0, atol=1e-12 * max(1.0, np.abs(expected).max()), err_msg=case.name
        )


def test_cases_cover_the_grid():
    tags = {tag for case in CASES for tag in case.tags}
    for tag in (
        "sympow",
        "taylor",
        "relu",
        "identity",
        "p1",
        "p2",
        "p3",
        "p4",
        "gate",
        "proportions",
        "rotary-half",
        "rotary-interleaved",
        "normalize",
        "unnormalized",
        "eps",
        "scale",
        "split",
        "broadcast",
        "zero-denominator",
        "packed",
        "initial-state",
    ):
        assert tag in tags, tag
    splits = {case.split for case in CASES if case.T == 13}
    assert {1, 12} <= splits and len(splits) >= 3  # first token, last token and in between
    assert len(CASES) == len(case_specs())
    names = (f"v{CASES_VERSION}.npz", f"v{CASES_VERSION}.json")
    size = sum(f.stat().st_size for f in map(lambda p: cases_directory().joinpath(p), names))
    assert size < 3_000_000


def test_version_2_keeps_every_case_of_version_1():
    """The packed cases were added in version 2; every case of version 1 is in it with the same name,
    options, tags and inputs (bit for bit), and outputs and states equal to float64 rounding (they are
    regenerated by the current reference)."""
    old = {case.name: case for case in load_cases(version=1)}
    new = {case.name: case for case in load_cases(version=2)}
    assert set(old) <= set(new) and all("packed" in new[name].tags for name in set(new) - set(old))
    for name, case in old.items():
        twin = new[name]
        assert (twin.options, twin.tags, twin.split, sorted(twin.arrays)) == (
            case.options, case.tags, case.split, sorted(case.arrays)
        ), name  # fmt: skip
        for key, array in case.arrays.items():
            if key in ("q", "k", "v", "log_gate", "a", "b", "rotary"):
                assert np.array_equal(array, twin.arrays[key]), (name, key)
            else:
                scale = max(1.0, float(np.abs(array).max(initial=0.0)))
                assert float(np.abs(array - twin.arrays[key]).max(initial=0.0)) <= 1e-14 * scale, (name, key)


def expected_checks(cases):
    """The number of checks ``check`` runs on ``cases``: output, state, resume and from-state with a
    split, the first two without; a packed case: output and state, or from-state from initial states."""

    def count(case):
        if case.cu_seqlens is not None:
            return 1 if case.initial() is not None else 2
        return 4 if case.split is not None else 2

    return sum(count(case) for case in cases)


def test_inputs_are_exact_in_every_dtype():
    import ml_dtypes  # installed with JAX; provides bfloat16 for NumPy

    for case in CASES[:10]:
        for name in ("q", "k", "v", "log_gate", "rotary"):
            x = case.arrays.get(name)
            if x is None:
                continue
            for dtype in (np.float16, ml_dtypes.bfloat16, np.float32):
                assert np.array_equal(x.astype(dtype).astype(np.float64), x), (case.name, name, dtype)
    assert np.array_equal(exact_in_all_dtypes(np.array([1.0, 0.0, -3.0])), [1.0, 0.0, -3.0])


def _validate_schema(value, schema, where="$"):
    """The subset of JSON Schema that schema.json uses."""
    kinds = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}
    if "type" in schema:
        allowed = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        ok = any(
            (isinstance(value, int) and not isinstance(value, bool))
            if kind == "integer"
            else (isinstance(value, (int, float)) and not isinstance(value, bool))
            if kind == "number"
            else isinstance(value, kinds[kind])
            for kind in allowed
        )
        assert ok, f"{where}: {value!r} is not of type {allowed}"
    if "const" in schema:
        assert value == schema["const"], where
    if "enum" in schema:
        assert value in schema["enum"], f"{where}: {value!r} not in {schema['enum']}"
    if "minimum" in schema:
        assert value >= schema["minimum"], where
    if "pattern" in schema:
        assert re.search(schema["pattern"], value), where
    if isinstance(value, dict):
        for key in schema.get("required", []):
            assert key in value, f"{where}: missing {key}"
        properties = schema.get("properties", {})
        for key, item in value.items():
            if "propertyNames" in schema:
                _validate_schema(key, schema["propertyNames"], f"{where}.{key} (name)")
            if key in properties:
                _validate_schema(item, properties[key], f"{where}.{key}")
            elif schema.get("additionalProperties") is False:
                raise AssertionError(f"{where}: unexpected key {key}")
            elif isinstance(schema.get("additionalProperties"), dict):
                _validate_schema(item, schema["additionalProperties"], f"{where}.{key}")
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            _validate_schema(item, schema["items"], f"{where}[{i}]")


def test_manifest_follows_the_schema_and_the_npz():
    folder = cases_directory()
    schema = json.loads(folder.joinpath("schema.json").read_text())
    manifest = json.loads(folder.joinpath(f"v{CASES_VERSION}.json").read_text())
    _validate_schema(manifest, schema)
    with folder.joinpath(f"v{CASES_VERSION}.npz").open("rb") as handle, np.load(handle) as archive:
        stored = set(archive.files)
        for entry in manifest["cases"]:
            for name, shape in entry["arrays"].items():
                key = f"{entry['name']}/{name}"
                assert key in stored and list(archive[key].shape) == shape and archive[key].dtype == "<f8"


# ----------------------------------------------------------------------------------------------------------
# The checker


def test_checker_passes_the_implementation_from_the_maths():
    report = check(naive_attention)
    assert report.passed and len(report.results) == expected_checks(CASES)


MISTAKES = {
    # mistake: (tag every failing case must carry, a case that must fail)
    "shifted mask": (None, "sympow-p2-norm-plain"),
    "gate on own key": ("gate", "sympow-p2-norm-gate"),
    "rotary sign": ("rotary", "sympow-p2-norm-rope_half"),
    "no square root": (None, "sympow-p2-norm-plain"),
    "drop z": (("split", "initial-state"), "sympow-p2-norm-gate-prop"),
}


@pytest.mark.parametrize("mistake", list(MISTAKES))
def test_checker_fails_each_wrong_implementation_naming_the_case(mistake):
    tag, must_fail = MISTAKES[mistake]
    wrong = functools.partial(naive_attention, mistake=mistake)
    with pytest.raises(ConformanceError, match=re.escape(must_fail)) as raised:
        check(wrong)
    report = raised.value.report
    failed = set(report.failed_cases)
    assert must_fail in failed
    by_name = {case.name: case for case in CASES}
    if tag is not None:
        tags = (tag,) if isinstance(tag, str) else tag
        assert all(set(tags) & set(by_name[name].tags) for name in failed), sorted(failed)
    if mistake == "no square root":  # only coefficients of degree >= 2 have a square root to lose
        assert all(
            by_name[name].kernel in ("sympow", "taylor") and by_name[name].power >= 2 for name in failed
        )
    if mistake == "drop z":
        assert {result.check for result in report.failures} <= {"resume", "from-state"}


def test_report_without_raising():
    wrong = functools.partial(naive_attention, mistake="rotary sign")
    report = check(wrong, cases=["sympow-p2-norm-plain", "sympow-p2-norm-rope_half"], raise_on_failure=False)
    assert not report.passed
    assert report.failed_cases == ["sympow-p2-norm-rope_half"]
    assert "sympow-p2-norm-rope_half" in report.summary()
    assert report.worst().case == "sympow-p2-norm-rope_half"


def test_an_exception_is_a_failure_of_that_case():
    def broken(q, k, v, **options):
        raise RuntimeError("not implemented")

    report = check(broken, cases=["relu-norm-plain"], checks=("output",), raise_on_failure=False)
    assert report.failed_cases == ["relu-norm-plain"]
    assert "RuntimeError: not implemented" in report.failures[0].detail


def _returning(transform):
    """sympow.attention with ``transform`` applied to its output y (and to no state)."""

    def fn(*args, **kwargs):
        out = sympow.attention(*args, **kwargs)
        return (transform(out[0]), out[1]) if isinstance(out, tuple) else transform(out)

    return fn


# what a wrong implementation returns -> the words the detail must hold (issue 12, item 8)
WRONG_KINDS = {
    "numpy for torch": (lambda y: y.numpy(), "output library numpy, expected torch"),
    "float64 for float32": (lambda y: y.double(), "output dtype torch.float64, expected torch.float32"),
    "an extra axis": (lambda y: y[None], "output shape"),
    "the meta device": (lambda y: y.to("meta"), "output device meta, expected cpu"),
}


@pytest.mark.parametrize("wrong", list(WRONG_KINDS))
def test_checker_refuses_outputs_of_the_wrong_kind(wrong):
    """Right numbers in the wrong library, dtype, shape or device fail every output check, naming it."""
    torch = pytest.importorskip("torch")
    del torch
    transform, words = WRONG_KINDS[wrong]
    cases = ["sympow-p2-norm-gate-prop-rope_half"]
    report = check(_returning(transform), cases=cases, dtype="float32", xp="torch", raise_on_failure=False)
    failing = {result.check for result in report.failures}
    assert failing == {"output", "resume", "from-state"}, report.summary()
    assert all(words in result.detail for result in report.failures), report.summary()
    assert check(sympow.attention, cases=cases, dtype="float32", xp="torch").passed


def test_checker_refuses_a_state_of_another_library():
    torch = pytest.importorskip("torch")

    def numpy_state(*args, **kwargs):
        out = sympow.attention(*args, **kwargs)
        if not isinstance(out, tuple):
            return out
        y, state = out
        return y, state._replace(S=state.S.numpy())

    report = check(numpy_state, cases=["sympow-p2-norm-gate-prop-rope_half"], dtype="float32", xp=torch,
                   raise_on_failure=False)  # fmt: skip
    failures = {result.check: result.detail for result in report.failures}
    assert set(failures) == {"state", "resume"}, report.summary()
    assert "state S library numpy, expected torch" in failures["state"]
    assert "initial_state.S" in failures["resume"]  # the resumed call refuses the mixed State


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="checks"):
        check(naive_attention, checks=("bogus",))
    with pytest.raises(ValueError, match="no tolerance"):
        check(naive_attention, dtype="float8")
    with pytest.raises(ValueError, match="names"):
        check(naive_attention, cases=["no-such-case"])


# ----------------------------------------------------------------------------------------------------------
# The project's own backends


def _targets():
    """(backend, library, form) for every backend that runs here, on every library it takes."""
    out = []
    for entry in general_backends():
        libraries = (
            ["numpy", "torch", "array_api_strict", "jax"] if "*" in entry.libraries else entry.libraries
        )
        for library in libraries:
            if library in ("numpy", "torch", "array_api_strict", "jax"):
                out += [(entry.name, library, form) for form in ("parallel", "recurrent", "chunked")]
    return out


# JAX compiles each operation (or each jitted call) for each new shape and option set, about a second
# per case and check here: per form, JAX runs two cases with every weight and the rotary (the second a
# batched state resumed with rotary shared across the batch, which failed on the jax backend before it
# executed the spec).
JAX_CASES = ["sympow-p2-norm-gate-prop-rope_half", "sympow-p2-norm-broadcast-gate-prop-rope_half"]


@pytest.mark.parametrize(("backend", "library", "form"), _targets(), ids=lambda x: str(x))
def test_checker_passes_the_project_backends(backend, library, form):
    pytest.importorskip({"jax": "jax.numpy"}.get(library, library))
    fn = functools.partial(sympow.attention, form=form, chunk_size=4, backend=backend)
    if library == "jax":
        check(fn, cases=JAX_CASES, dtype="float64", xp=library)
        return
    check(fn, dtype="float64", xp=library)
    check(fn, cases=load_cases(exclude_tags=["long"]), dtype="float32", xp=library)


# The whole suite on JAX runs in a process of its own, in which only JAX and sympow are loaded: in the
# shared test process, after Numba's llvmlite and torch have been loaded by other tests, XLA's compiler
# crashed (a segmentation fault in backend_compile_and_load) in one full run of three, taking the worker
# with it. Alone, it passed every run.
WHOLE_SUITE_ON_JAX = """
import functools, sys
import jax
jax.config.update("jax_enable_x64", True)
import sympow
from sympow.testing import check, load_cases

backend = sys.argv[1]


@functools.cache
def compiled(options):
    def run(q, k, v, log_gate, proportions, rotary, initial_state, cu_seqlens):
        return sympow.attention(q, k, v, log_gate=log_gate, proportions=proportions, rotary=rotary,
                                initial_state=initial_state, cu_seqlens=cu_seqlens, backend="reference",
                                **dict(options))
    return jax.jit(run)


def reference_under_jit(q, k, v, *, log_gate=None, proportions=None, rotary=None, initial_state=None,
                        cu_seqlens=None, **options):
    return compiled(tuple(sorted(options.items())))(q, k, v, log_gate, proportions, rotary, initial_state,
                                                    cu_seqlens)


fn = functools.partial(sympow.attention, backend="jax") if backend == "jax" else reference_under_jit
report = check(fn, dtype="float64", xp="jax")
packed = sum(1 if case.initial() is not None else 2 for case in load_cases(tags=["packed"]))
expected = packed + sum(4 if case.split is not None else 2 for case in load_cases(exclude_tags=["packed"]))
assert len(report.results) == expected, (len(report.results), expected)
print(report.summary())
print("ok")
"""


@pytest.mark.parametrize("backend", ["jax", "reference"])
def test_the_whole_suite_on_jax(backend):
    """Every shipped case and every check on JAX, float64, form "auto": the jax backend as called (its
    forward is jitted) and the reference (the spec executed by Python loops) under jax.jit, one compile
    per option set and shape (eager JAX compiles every primitive anew, minutes a case). The run that
    failed on the broadcast-state case before the jax backend executed the spec (issue 12, item 1);
    about three minutes of compiling each on 2 cores."""
    pytest.importorskip("jax.numpy")
    result = subprocess.run(
        [sys.executable, "-c", WHOLE_SUITE_ON_JAX, backend], capture_output=True, text=True, timeout=1500,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )  # fmt: skip
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), (
        result.stdout[-3000:] + result.stderr[-3000:]
    )


# ----------------------------------------------------------------------------------------------------------
# Adapters


def bthd_attention(
    q, k, v, *, kernel, power, scale, log_gate, proportions, rotary, rotary_layout, normalize, eps
):
    """Another layout: q, k [b, t, h, d], v [b, t, h, e], per-token log gates [b, t, h]; the quadratic
    form written with einsum (no state)."""
    b, T, h, d = q.shape
    assert k.shape == (b, T, h, d) and v.shape[:3] == (b, T, h)
    sigma = d**-0.5 if scale is None else scale
    if rotary is not None:
        assert rotary.shape == (b, T, h, d // 2)
        angles = np.cumsum(rotary, axis=1)
        q, k = rotate(q, angles, rotary_layout), rotate(k, angles, rotary_layout)
    if kernel == "relu":
        kappa = sigma * np.einsum("bihd,bjhd->bhij", np.maximum(q, 0), np.maximum(k, 0))
    else:
        s = sigma * np.einsum("bihd,bjhd->bhij", q, k)
        kappa = (
            s**power
            if kernel == "sympow"
            else s
            if kernel == "identity"
            else sum(s**n / math.factorial(n) for n in range(power + 1))
        )
    causal = np.tril(np.ones((T, T), dtype=bool))
    log_weight = np.zeros((b, h, T, T))
    if log_gate is not None:
        assert log_gate.shape == (b, T, h)
        total = np.cumsum(np.transpose(log_gate, (0, 2, 1)), axis=-1)
        log_weight = np.where(causal, total[..., :, None] - total[..., None, :], -np.inf)
    weight = np.where(causal, np.exp(log_weight), 0.0) * kappa
    if proportions is not None:
        a, b_ = (np.transpose(x, (0, 2, 1)) for x in proportions)
        assert a.shape == (b, h, T)
        weight = weight * np.cos(np.pi / 2 * (a[..., :, None] - b_[..., None, :]))
    numerator = np.einsum("bhij,bjhe->bihe", weight, v)
    if not normalize:
        return numerator
    denominator = np.transpose(weight.sum(-1), (0, 2, 1))[..., None] + eps
    return np.where(denominator == 0, 0.0, numerator / np.where(denominator == 0, 1.0, denominator))


def test_adapter_for_the_bthd_layout_with_per_token_gates():
    unpacked = load_cases(exclude_tags=["packed"])
    report = check(adapt_layout(bthd_attention, "bthd"), cases=unpacked, checks=("output",))
    assert report.passed and len(report.results) == len(unpacked)


def _as_layout(layout):
    """sympow.attention called from ``layout`` (a wrapped foreign implementation with a state)."""
    moves = {"bthd": lambda x: np.swapaxes(x, 1, 2), "bhtd": lambda x: x}

    def fn(q, k, v, *, log_gate=None, proportions=None, rotary=None, **options):
        if layout == "btd":
            assert q.ndim == 3 and (log_gate is None or log_gate.ndim == 2)
            return sympow.attention(
                q, k, v, log_gate=log_gate, proportions=proportions, rotary=rotary, **options
            )
        move = moves[layout]
        per_token = (
            (lambda x: None if x is None else np.swapaxes(x, 1, 2)) if layout == "bthd" else (lambda x: x)
        )
        out = sympow.attention(
            move(q),
            move(k),
            move(v),
            log_gate=per_token(log_gate),
            rotary=None if rotary is None else move(rotary),
            proportions=None if proportions is None else tuple(per_token(x) for x in proportions),
            **options,
        )
        if options.get("return_state"):
            return move(out[0]), out[1]
        return move(out)

    return fn


@pytest.mark.parametrize("layout", ["bthd", "bhtd", "btd"])
def test_adapters_carry_states(layout):
    cases = load_cases(exclude_tags=["broadcast", "packed"])[::3]
    check(adapt_layout(_as_layout(layout), layout), cases=cases)


def test_adapter_refuses_unknown_layouts():
    with pytest.raises(ValueError, match="layout"):
        adapt_layout(bthd_attention, "tbhd")


# ----------------------------------------------------------------------------------------------------------
# The pytest helper, used as another project would


@conformance_parametrize(tags=["gate"], exclude_tags=["long"])
def test_conformance_parametrize(conformance_case):
    assert "gate" in conformance_case.tags
    check(naive_attention, cases=[conformance_case], dtype="float32", xp="numpy")
