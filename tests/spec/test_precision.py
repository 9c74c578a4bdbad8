"""The precision contract of math.md 9: the state path's dtype, and its condition number.

- A float32 state path is held, row by row, to tol_i = max(tau, gamma u32 c_i) against the float64
  brute force, on the Hypothesis inputs and on queries nearly orthogonal to every key (c_i up to 1e8), in
  every form and backend; the condition term is needed (those inputs break the plain table).
- ``state_dtype="float64"`` holds the plain table with no condition term, on the same inputs.
- ``state_dtype`` sets the State's dtype; a State resumes across state dtypes; the default is float64
  above degree 4, where the table then holds for float16, bfloat16 and float32 inputs.
"""

from __future__ import annotations

import array_api_compat
import numpy as np
import pytest
from hypothesis import strategies as st

import sympow
from sympow.testing import assert_close, assert_close_rows, relative_errors_by_row, to_numpy, tolerance
from sympow.testing.strategies import (
    FORMS,
    attention_cases,
    given_for,
    nearly_orthogonal_cases,
    nearly_orthogonal_inputs,
)
from tests.brute_force import reference
from tests.conftest import import_namespace
from tests.spec.test_state import split
from tests.without_x64 import run_without_x64

from ..own_process import in_own_process, run_alone

# (namespace, backend): the reference on every CPU namespace but eager JAX (too slow for property tests;
# the jax backend executes the same spec), and the native backends.
PAIRS = [
    ("numpy", "reference"),
    ("array_api_strict", "reference"),
    ("torch", "reference"),
    ("torch", "torch"),
    ("jax", "jax"),
]
IDS = [f"{library}-{backend}" for library, backend in PAIRS]
STATE_FORMS = ("recurrent", "chunked")


@pytest.fixture(params=PAIRS, ids=IDS)
def pair(request):
    library, backend = request.param
    return import_namespace(library), backend


def float32_cases():
    """Ordinary float32 problems and nearly orthogonal ones, both normalised and not."""
    return st.one_of(
        attention_cases(dtypes=("float32",), max_T=40),
        nearly_orthogonal_cases(dtypes=("float32",), max_T=40, gate=None),
    )


@pytest.mark.parametrize("form", STATE_FORMS)
def test_float32_state_path_within_the_condition_tolerance(pair, form):
    xp, backend = pair

    @given_for(xp, case=float32_cases())
    def check(case):
        y = case.call(sympow.attention, xp, form=form, backend=backend, state_dtype="float32")
        assert_close_rows(
            y, reference(case.inputs, **case.options), case.inputs["v"], dtype_name="float32",
            normalize=case.normalize, condition=case.condition(), state_dtype_name="float32",
            what=f"{backend} {form} {case}",
        )  # fmt: skip

    check()


@pytest.mark.parametrize("form", FORMS)
def test_float64_state_path_holds_the_table_without_a_condition_term(pair, form):
    xp, backend = pair

    @given_for(xp, case=nearly_orthogonal_cases(dtypes=("float32",), max_T=40))
    def check(case):
        y = case.call(sympow.attention, xp, form=form, backend=backend, state_dtype="float64")
        assert_close(
            y, reference(case.inputs, **case.options), case.inputs["v"], dtype_name="float32",
            normalize=True, what=f"{backend} {form} {case}",
        )  # fmt: skip

    check()


@pytest.mark.parametrize("form", STATE_FORMS)
def test_the_condition_term_is_needed(pair, form):
    """On queries nearly orthogonal to every key the float32 state path leaves the plain table (so a
    test without the term would fail) and stays within the condition tolerance."""
    xp, backend = pair
    inputs = nearly_orthogonal_inputs(batch=(2,), T=24, d=8, e=3, p=2, r=4, seed=11, dtype="float32")
    arrays = {key: xp.asarray(inputs[key].astype(np.float32)) for key in "qkv"}
    y = sympow.attention(*arrays.values(), form=form, chunk_size=8, backend=backend, state_dtype="float32")
    y_ref = reference(inputs)
    c = sympow.testing.condition_numbers(inputs["q"], inputs["k"], inputs["v"])
    errors = relative_errors_by_row(y, y_ref, inputs["v"], normalize=True)
    assert errors.max() > 10 * tolerance("float32"), errors.max()
    assert_close_rows(y, y_ref, inputs["v"], dtype_name="float32", normalize=True, condition=c)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("state_dtype", [None, "float32", "float64"])
def test_the_state_carries_its_dtype_and_resumes_across_dtypes(pair, form, state_dtype):
    xp, backend = pair
    inputs = sympow.testing.make_inputs(batch=(2,), T=12, d=4, e=3, seed=2, gate=True, rotary=True)
    arrays = sympow.testing.convert(inputs, xp, "float32")
    head, tail = split(arrays, 5)
    kwargs = dict(form=form, chunk_size=4, backend=backend)
    y1, state = sympow.attention(
        head["q"], head["k"], head["v"], log_gate=head["log_gate"], rotary=head["rotary"],
        return_state=True, state_dtype=state_dtype, **kwargs,
    )  # fmt: skip
    expected = "float32" if state_dtype is None else state_dtype
    for field in (state.S, state.z, state.log_scale):
        assert str(field.dtype).rsplit(".", 1)[-1] == expected
    for other in ("float32", "float64"):  # resumed in the other state dtype too
        y2, resumed = sympow.attention(
            tail["q"], tail["k"], tail["v"], log_gate=tail["log_gate"], rotary=tail["rotary"],
            initial_state=state, return_state=True, state_dtype=other, **kwargs,
        )  # fmt: skip
        assert str(resumed.S.dtype).rsplit(".", 1)[-1] == other
        y = np.concatenate([to_numpy(y1), to_numpy(y2)], axis=-2)
        assert_close(y, reference(inputs), inputs["v"], dtype_name="float32", normalize=True)


def test_state_dtype_is_validated():
    q = np.ones((3, 4))
    with pytest.raises(ValueError, match=r"state_dtype must be one of .*'float16'"):
        sympow.attention(q, q, q, state_dtype="float16")


# 16-bit dtypes where the namespace has them (NumPy: no bfloat16; array-api-strict: neither).
LOW_PRECISION = {"numpy": ("float16", "float32"), "array_api_strict": ("float32",)}
HIGH_DEGREE_RUNS = [
    pytest.param(library, backend, dtype, id=f"{library}-{backend}-{dtype}")
    for library, backend in PAIRS
    for dtype in LOW_PRECISION.get(library, ("float16", "bfloat16", "float32"))
]


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize(("library", "backend", "dtype"), HIGH_DEGREE_RUNS)
def test_high_degrees_default_to_a_float64_state_path(library, backend, dtype, form, request):
    """Degrees 6 to 16 with 16- and 32-bit inputs: the default state path is float64 and every form holds
    the tolerance table on every row but those where u64 c_i exceeds it (a float32 state path at p = 16
    returns garbage on ordinary inputs). Normalised output: unnormalised s^16 leaves the float16 range on
    ordinary inputs (a true overflow). On JAX each node runs in a process of its own: in the shared test
    process XLA's compiler crashed here (a segmentation fault in backend_compile_and_load) in two full
    runs, as it did for the whole conformance suite (tests/testing/test_conformance.py)."""
    if library == "jax" and not in_own_process():
        run_alone(request.node.nodeid)
        return
    xp = import_namespace(library)
    cases = attention_cases(
        kernels=("sympow", "taylor"), even_power=True, normalize=True, min_p=6, max_p=16, max_T=24,
        dtypes=("float32",),
    )  # fmt: skip

    @given_for(xp, case=cases)
    def check(case):
        compat = array_api_compat.array_namespace(case.arrays(xp)["q"])
        arrays = {
            key: tuple(compat.astype(x, getattr(xp, dtype)) for x in value)
            if isinstance(value, tuple)
            else compat.astype(value, getattr(xp, dtype))
            for key, value in case.arrays(xp).items()
        }
        rounded = {
            key: tuple(map(to_numpy, value)) if isinstance(value, tuple) else to_numpy(value)
            for key, value in arrays.items()
        }
        y, state = sympow.attention(
            arrays["q"], arrays["k"], arrays["v"], log_gate=arrays.get("log_gate"),
            rotary=arrays.get("rotary"), proportions=arrays.get("proportions"), form=form,
            chunk_size=case.chunk_size, backend=backend, return_state=True, **case.options,
        )  # fmt: skip
        assert str(state.S.dtype).rsplit(".", 1)[-1] == "float64"
        # u64 c_i stays below tau unless a query is nearly orthogonal to its keys: at p = 16 in d = 4,
        # c_i reaches 1e16 on such a row (math.md 9), where the float64 state path holds only its own
        # term; so the contract's per-row tolerance with u = u64 (the parallel form: the table alone)
        case.assert_matches(
            y, reference(rounded, **case.options), state_path=form != "parallel", dtype=dtype,
            state_dtype="float64", inputs=rounded, what=f"{backend} {form} {case}",
        )  # fmt: skip

    check()


JAX_WITHOUT_X64 = """
import jax, numpy as np, sympow
from sympow.testing import assert_close_rows, condition_numbers, make_inputs
from sympow.testing.strategies import nearly_orthogonal_inputs
assert not jax.config.jax_enable_x64
x = nearly_orthogonal_inputs(T=20, d=8, e=3, p=4, r=3, seed=5, dtype="float32")
for form in ("recurrent", "chunked"):
    y, state = sympow.attention(*(jax.numpy.asarray(x[k]) for k in "qkv"), power=4, form=form, chunk_size=8,
                                return_state=True)
    assert str(state.S.dtype) == "float32"
    y_ref = sympow.attention(x["q"], x["k"], x["v"], power=4, form="parallel", backend="reference")
    c = condition_numbers(x["q"], x["k"], x["v"], power=4)
    assert_close_rows(y, y_ref, x["v"], dtype_name="float32", normalize=True, condition=c, what=form)
try:
    sympow.attention(jax.numpy.ones((2, 2)), jax.numpy.ones((2, 2)), jax.numpy.ones((2, 2)),
                     state_dtype="float64")
except ValueError as error:
    assert "state_dtype" in str(error) and "x64" in str(error), error
else:
    raise AssertionError("state_dtype='float64' without x64 was accepted")
print("ok")
"""


def test_jax_without_x64_follows_the_condition_term():
    """JAX's default (no x64) has no float64: the state path is float32 at every degree, its error
    follows the condition term, and state_dtype='float64' is refused. In its own process: the test
    session enables x64 for every other JAX test."""
    run_without_x64(JAX_WITHOUT_X64)
