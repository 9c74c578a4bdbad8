"""Every form against the brute-force double loop, the forms against each other, result types."""

from __future__ import annotations

import functools

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import sympow
from sympow.spec import forms as spec_forms
from sympow.testing import assert_close, convert, make_inputs, to_numpy
from sympow.testing.strategies import FORMS, attention_cases, case_id, chunk_sizes, given_for
from tests.brute_force import brute_force, dense_reference, reference

pytestmark = pytest.mark.usefixtures("spec_backend")

ALL_FORMS = (*FORMS, "auto")


def check_result_type(y, like, shape):
    """y is an array of like's library, dtype and device, of the given shape."""
    import array_api_compat

    assert type(y) is type(like), f"result is {type(y)}, input is {type(like)}"
    assert y.dtype == like.dtype, f"result dtype {y.dtype}, input dtype {like.dtype}"
    assert tuple(y.shape) == tuple(shape), f"result shape {tuple(y.shape)}, expected {shape}"
    assert array_api_compat.device(y) == array_api_compat.device(like)


def check_state_dtypes(state, q, highest_degree=2):
    """The state is kept in the contract's state dtype (math.md 9): the inputs' accumulation dtype up to
    degree 4 (float32 for float32 inputs), float64 above; the same for S, z and log_scale, in the input's
    namespace (a 0-d NumPy field may be a NumPy scalar)."""
    import array_api_compat

    from sympow.testing.tolerances import contract_state_dtype

    for field in (state.S, state.z, state.log_scale):
        assert array_api_compat.array_namespace(field) is array_api_compat.array_namespace(q)
        if field.ndim > 0:
            assert type(field) is type(q)
        assert str(field.dtype) == str(state.S.dtype)
    name = str(state.S.dtype).rsplit(".", 1)[-1]
    expected = contract_state_dtype(str(q.dtype).rsplit(".", 1)[-1], highest_degree=highest_degree)
    assert name == expected, f"state dtype {name}, the contract's {expected}"


# Brute force is O(T^2 d) Python: T <= 48 here. Every comparison of a drawn case is held to the
# contract's tolerance (``AttentionCase.assert_matches``, math.md 9): the table on every row, plus the
# condition term on the rows of a state path that is ill-conditioned; the parallel form (no state path)
# to the table alone.
@pytest.mark.parametrize("form", ALL_FORMS)
def test_form_matches_brute_force(xp, form):
    @given_for(xp, case=attention_cases(max_T=48))
    def check(case):
        y = case.call(sympow.attention, xp, form=form)
        check_result_type(y, case.arrays(xp)["q"], (*case.batch, case.T, case.e))
        y_ref = reference(case.inputs, **case.options)
        case.assert_matches(y, y_ref, state_path=form != "parallel", what=f"{form} {case}")

    check()


def test_odd_power_unnormalized_matches_brute_force(xp):
    """Odd p (signed kernel) unnormalised, in every form."""

    @given_for(xp, case=attention_cases(max_T=48, kernels=("sympow",), normalize=False, even_power=False))
    def check(case):
        y_ref = reference(case.inputs, **case.options)
        for form in FORMS:
            y = case.call(sympow.attention, xp, form=form)
            case.assert_matches(y, y_ref, state_path=form != "parallel", what=f"{form} {case}")

    check()


def test_even_power_normalized_matches_brute_force(xp):
    @given_for(xp, case=attention_cases(max_T=48, kernels=("sympow",), normalize=True))
    def check(case):
        y_ref = reference(case.inputs, **case.options)
        for form in FORMS:
            y = case.call(sympow.attention, xp, form=form)
            case.assert_matches(y, y_ref, state_path=form != "parallel", what=f"{form} {case}")

    check()


def test_forms_agree(xp):
    """parallel == recurrent == chunked (drawn chunk size 1..T+3) == auto up to T = 200, each against
    the float64 dense brute force (tests/brute_force.py: the definition as whole-array NumPy, none of
    the library's code) on the same (rounded) inputs, so that no form is measured against itself."""

    @given_for(xp, case=attention_cases(max_T=200), data=st.data())
    def check(case, data):
        y_ref = dense_reference(case.inputs, **case.options)
        chunk = data.draw(chunk_sizes(case.T), label="chunk_size")
        for form in ALL_FORMS:
            y = case.call(sympow.attention, xp, form=form, chunk_size=chunk)
            case.assert_matches(
                y, y_ref, state_path=form != "parallel", what=f"{form} chunk_size={chunk} {case}"
            )

    check()


@given(case=attention_cases(max_T=40, max_batch_axes=1, dtypes=("float64",)))
def test_every_chunk_size(case):
    """The chunked form agrees with the parallel form for every chunk size 1..T+3."""
    y_ref = case.call(sympow.attention, np, form="parallel")
    for chunk in range(1, case.T + 4):
        y = case.call(sympow.attention, np, form="chunked", chunk_size=chunk)
        case.assert_matches(y, y_ref, what=f"chunk_size={chunk} {case}")


GRID = [
    ((), 1, 2),
    ((), 2, 3),
    ((), 17, 4),
    ((2,), 9, 6),
    ((1, 3), 33, 8),
    ((2, 2), 24, 16),
]


@functools.cache
def grid_case(batch, T, d, dtype):
    """Inputs with every feature on (gates, rotary where d is even, proportions) and the brute force
    for p = 4, computed once per shape and dtype."""
    inputs = make_inputs(
        batch=batch, T=T, d=d, e=3, seed=T * 100 + d, gate=True, rotary=d % 2 == 0,
        proportions=True, dtype=dtype,
    )  # fmt: skip
    return inputs, reference(inputs, power=4)


@pytest.mark.parametrize(("batch", "T", "d"), GRID, ids=[case_id(*shape) for shape in GRID])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_grid_against_brute_force(xp, dtype, batch, T, d):
    """Fixed shapes, every feature on at once, p = 4, in every form."""
    inputs, y_ref = grid_case(batch, T, d, dtype)
    arrays = convert(inputs, xp, dtype)
    for form in ALL_FORMS:
        y = sympow.attention(
            arrays["q"], arrays["k"], arrays["v"], power=4, log_gate=arrays["log_gate"],
            rotary=arrays.get("rotary"), proportions=arrays["proportions"], form=form, chunk_size=5,
        )  # fmt: skip
        check_result_type(y, arrays["q"], (*batch, T, 3))
        assert_close(y, y_ref, inputs["v"], dtype_name=dtype, normalize=True, what=form)


# The cases users run, as explicit examples beside the drawn ones: sympow p = 2 and p = 4, normalised,
# with gates, rotary and proportions, d = 16..64 (p = 4 only to d = 24: D' = 2 C(27, 4) = 35100).
# (batch, T, d, e, p, rotary_layout, chunk_size)
CORE = [
    ((2,), 48, 64, 8, 2, "half", 16),
    ((), 40, 32, 5, 2, "interleaved", 7),
    ((2,), 33, 16, 4, 4, "half", 8),
    ((), 20, 24, 3, 4, "interleaved", 6),
]


def core_id(batch, T, d, e, p, layout, chunk):
    return f"{case_id(batch, T, d)}-p{p}-{layout}"


@functools.cache
def core_case(batch, T, d, e, p, layout, dtype):
    """Inputs of a CORE case (gates, rotary, proportions) and its float64 double loop."""
    inputs = make_inputs(
        batch=batch, T=T, d=d, e=e, seed=7 * T + d + p, gate=True, rotary=True, proportions=True,
        dtype=dtype,
    )  # fmt: skip
    return inputs, reference(inputs, power=p, rotary_layout=layout)


# Every core case on the eager namespaces that run the reference as written (NumPy, and array-api-strict
# for the standard alone); PyTorch and JAX (seconds of compilation per shape and form) take the first,
# d = 64, in float32, and the property tests' draws.
CORE_RUNS = [
    pytest.param(namespace, dtype, core, id=f"{namespace}-{dtype}-{core_id(*core)}")
    for namespace in ("numpy", "array_api_strict")
    for dtype in ("float64", "float32")
    for core in CORE
] + [
    pytest.param(namespace, "float32", CORE[0], id=f"{namespace}-float32-{core_id(*CORE[0])}")
    for namespace in ("torch", "jax")
]


@pytest.mark.parametrize(("xp", "dtype", "core"), CORE_RUNS, indirect=["xp"])
def test_core_cases_against_brute_force(xp, dtype, core):
    """The core cases (CORE), normalised, every form, against the double loop: the kernel users run is
    checked on every run whatever the Hypothesis draws reach."""
    batch, T, d, e, p, layout, chunk = core
    inputs, y_ref = core_case(batch, T, d, e, p, layout, dtype)
    arrays = convert(inputs, xp, dtype)
    for form in ALL_FORMS:
        y = sympow.attention(
            arrays["q"], arrays["k"], arrays["v"], power=p, log_gate=arrays["log_gate"],
            rotary=arrays["rotary"], rotary_layout=layout, proportions=arrays["proportions"],
            form=form, chunk_size=chunk,
        )  # fmt: skip
        check_result_type(y, arrays["q"], (*batch, T, e))
        assert_close(y, y_ref, inputs["v"], dtype_name=dtype, normalize=True, what=f"{form} p={p}")


@given(case=attention_cases(max_T=24, dtypes=("float64",)))
def test_dense_brute_force_is_the_double_loop(case):
    """The dense brute force (the reference of ``test_forms_agree``) equals the double loop to float64
    rounding, on every kernel and weight, so that it is a reference in its own right."""
    assert_close(
        dense_reference(case.inputs, **case.options), reference(case.inputs, **case.options),
        case.inputs["v"], dtype_name="float64", normalize=case.normalize, what=str(case),
    )  # fmt: skip


def split_tokens(inputs, t):
    """(first t tokens, the rest) of a ``make_inputs`` dict with a batch axis (proportions split
    element-wise)."""

    def cut(x, part):
        if isinstance(x, tuple):
            return tuple(cut(a, part) for a in x)
        axis = -1 if x.ndim == inputs["q"].ndim - 1 else -2
        index = [slice(None)] * x.ndim
        index[axis] = slice(None, t) if part == 0 else slice(t, None)
        return x[tuple(index)]

    return tuple({key: cut(value, part) for key, value in inputs.items()} for part in (0, 1))


@pytest.fixture(params=["numpy", "array_api_strict"])
def eager_namespace(request):
    """NumPy, and array-api-strict for the standard alone: the row blocks are array-API code, run
    eagerly (no compiled-function cache that would keep an earlier block size)."""
    from tests.conftest import import_namespace

    return import_namespace(request.param)


@pytest.mark.parametrize("rows", [1, 3, 8])
@pytest.mark.parametrize(
    ("power", "normalize", "dtype"),
    [(2, True, "float64"), (4, True, "float32"), (2, False, "float64")],
)
def test_parallel_row_blocks_with_a_resumed_state(
    eager_namespace, monkeypatch, rows, power, normalize, dtype
):
    """The parallel form in blocks of query rows, made reachable by shrinking ROW_BLOCK_ELEMENTS to
    ``rows`` x 21: a 21-token call resumed from a 10-token prefix's state runs in 3 to 21 blocks (the keys
    before a block decayed into it, the state queried block by block), the prefix in blocks of
    min(10, 2.1 rows). With gates, rotary and proportions, prefix then resumed call equal the float64
    double loop over the whole sequence, and the resumed call equals the recurrent and chunked forms
    resumed from the same state."""
    xp = eager_namespace
    head_T, T = 10, 21
    inputs = make_inputs(
        batch=(2,), T=head_T + T, d=8, e=3, seed=40 + power, gate=True, rotary=True, proportions=True,
        dtype=dtype,
    )  # fmt: skip
    y_ref = brute_force(
        inputs["q"], inputs["k"], inputs["v"], power=power, log_gate=inputs["log_gate"],
        rotary=inputs["rotary"], proportions=inputs["proportions"], normalize=normalize,
    )  # fmt: skip
    head, tail = (convert(part, xp, dtype) for part in split_tokens(inputs, head_T))

    def call(arrays, form, **kwargs):
        return sympow.attention(
            arrays["q"], arrays["k"], arrays["v"], power=power, normalize=normalize,
            log_gate=arrays["log_gate"], rotary=arrays["rotary"], proportions=arrays["proportions"],
            form=form, chunk_size=4, backend="reference", **kwargs,
        )  # fmt: skip

    monkeypatch.setattr(spec_forms, "ROW_BLOCK_ELEMENTS", rows * T)
    y_head, state = call(head, "parallel", return_state=True)
    y_tail = call(tail, "parallel", initial_state=state)
    y = np.concatenate([to_numpy(y_head), to_numpy(y_tail)], axis=-2)
    assert_close(
        y, y_ref, inputs["v"], dtype_name=dtype, normalize=normalize,
        what=f"rows={rows}: prefix, then resumed, against the double loop",
    )  # fmt: skip
    for form in ("recurrent", "chunked"):
        assert_close(
            y_tail, call(tail, form, initial_state=state), inputs["v"], dtype_name=dtype,
            normalize=normalize, what=f"rows={rows}: resumed parallel against resumed {form}",
        )  # fmt: skip


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_reference_backend_on_jax(dtype):
    """The array-API reference itself on JAX arrays (the property tests use the native JAX backend
    there, see tests/conftest.py), on two fixed shapes, every form."""
    jnp = pytest.importorskip("jax.numpy")
    for batch, T, d in (((), 17, 4), ((2,), 9, 6)):
        inputs, y_ref = grid_case(batch, T, d, dtype)
        arrays = convert(inputs, jnp, dtype)
        for form in ALL_FORMS:
            y, state = sympow.attention(
                arrays["q"], arrays["k"], arrays["v"], power=4, log_gate=arrays["log_gate"],
                rotary=arrays.get("rotary"), proportions=arrays["proportions"], form=form,
                chunk_size=5, backend="reference", return_state=True,
            )  # fmt: skip
            check_result_type(y, arrays["q"], (*batch, T, 3))
            check_state_dtypes(state, arrays["q"], highest_degree=4)
            assert_close(y, y_ref, inputs["v"], dtype_name=dtype, normalize=True, what=form)


@pytest.mark.parametrize("form", ALL_FORMS)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_result_and_state_types(xp, dtype, form):
    """Namespace, shape, dtype and device of y and of the state's arrays follow the input."""
    inputs = make_inputs(batch=(2,), T=11, d=4, e=5, seed=3, gate=True, rotary=True, dtype=dtype)
    arrays = convert(inputs, xp, dtype)
    q = arrays["q"]
    y, state = sympow.attention(
        q, arrays["k"], arrays["v"], log_gate=arrays["log_gate"], rotary=arrays["rotary"],
        form=form, return_state=True, chunk_size=4,
    )  # fmt: skip
    check_result_type(y, q, (2, 11, 5))
    assert isinstance(state, sympow.State)
    D = 10  # C(4 + 2 - 1, 2)
    assert type(state.S) is type(q)
    assert tuple(state.S.shape) == (2, D, 5)
    assert tuple(state.z.shape) == (2, D)
    assert tuple(state.mu.shape) == (2, 2)
    assert tuple(state.log_scale.shape) == (2,)
    check_state_dtypes(state, q)
    assert np.isfinite(to_numpy(state.log_scale)).all()
    y_plain = sympow.attention(
        q,
        arrays["k"],
        arrays["v"],
        log_gate=arrays["log_gate"],
        rotary=arrays["rotary"],
        form=form,
        chunk_size=4,
    )
    check_result_type(y_plain, q, (2, 11, 5))
    assert_close(y_plain, y, inputs["v"], dtype_name=dtype, normalize=True, what="return_state changes y")


@pytest.mark.parametrize("form", ALL_FORMS)
def test_broadcast_leading_axes(xp, form):
    """Leading axes broadcast across q, k, v, log_gate, rotary and proportions."""
    T, d, e = 9, 4, 2
    base = make_inputs(batch=(2, 3), T=T, d=d, e=e, seed=5, gate=True, rotary=True, proportions=True)
    inputs = {
        "q": base["q"][:, :1],  # [2, 1, T, d]
        "k": base["k"][0],  # [3, T, d]
        "v": base["v"][:1, :1],  # [1, 1, T, e]
        "log_gate": base["log_gate"],  # [2, 3, T]
        "rotary": base["rotary"][0, 0],  # [T, d/2]
        "proportions": (base["proportions"][0][1], base["proportions"][1][:, :1]),
    }
    arrays = convert(inputs, xp, "float64")
    y = sympow.attention(
        arrays["q"], arrays["k"], arrays["v"], log_gate=arrays["log_gate"],
        rotary=arrays["rotary"], proportions=arrays["proportions"], form=form, chunk_size=4,
    )  # fmt: skip
    check_result_type(y, arrays["q"], (2, 3, T, e))
    y_ref = reference(inputs, power=2)
    assert_close(y, y_ref, inputs["v"], dtype_name="float64", normalize=True, what=form)
