"""Every bad input raises ValueError or TypeError whose message names the argument."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

import sympow
from sympow.testing import assert_close, convert, make_inputs, to_numpy
from tests.brute_force import reference
from tests.spec.test_forms import check_result_type

pytestmark = pytest.mark.usefixtures("spec_backend")

ERRORS = (ValueError, TypeError)


def named(*names):
    """A regex matching any of the argument names as a whole word."""
    return "|".join(rf"(?<![\w.]){re.escape(name)}(?![\w])" for name in names)


VALID = make_inputs(batch=(2,), T=6, d=4, e=3, seed=0, gate=True, rotary=True, proportions=True)


@pytest.fixture
def arrays(xp):
    """A valid call's inputs (every optional one included) in the namespace ``xp``, float64."""
    return convert(VALID, xp, "float64")


def call(arrays, **overrides):
    kwargs = {"q": arrays["q"], "k": arrays["k"], "v": arrays["v"], **overrides}
    q, k, v = kwargs.pop("q"), kwargs.pop("k"), kwargs.pop("v")
    return sympow.attention(q, k, v, **kwargs)


def other(xp, shape, *, seed=1, dtype="float64"):
    rng = np.random.default_rng(seed)
    return convert({"x": rng.standard_normal(shape)}, xp, dtype)["x"]


def test_valid_call_passes(arrays):
    """The fixture's valid call (every optional input given) raises nothing and returns the float64
    double loop's y, as an array of the input's namespace, dtype and shape: the checks refuse
    nothing that is valid."""
    y = call(
        arrays,
        log_gate=arrays["log_gate"],
        rotary=arrays["rotary"],
        proportions=arrays["proportions"],
    )
    check_result_type(y, arrays["q"], (2, 6, 3))
    assert_close(y, reference(VALID), VALID["v"], dtype_name="float64", normalize=True)


@pytest.mark.parametrize(
    ("name", "shape"),
    [
        ("k", (2, 7, 4)),  # T differs
        ("v", (2, 5, 3)),  # T differs
        ("k", (2, 6, 5)),  # d differs
        ("k", (3, 6, 4)),  # leading axes do not broadcast
        ("v", (4, 6, 3)),  # leading axes do not broadcast
        ("q", (2, 6)),  # too few axes? q [T, d] is fine; k then has T=2 != 6
    ],
    ids=["k-T", "v-T", "k-d", "k-batch", "v-batch", "q-rank"],
)
def test_mismatched_shapes(xp, arrays, name, shape):
    bad = other(xp, shape)
    expected = ("q", "k") if name == "q" else (name,)
    with pytest.raises(ERRORS, match=named(*expected)):
        call(arrays, **{name: bad})


@pytest.mark.parametrize("name", ["q", "k", "v"])
def test_one_dimensional_array(xp, arrays, name):
    bad = other(xp, (6,))
    with pytest.raises(ERRORS, match=named(name, "q")):
        call(arrays, **{name: bad})


@pytest.mark.parametrize(
    ("kernel", "power"),
    [("sympow", 1), ("sympow", 3), ("sympow", 5), ("identity", 1), ("taylor", 3)],
)
def test_normalize_needs_nonnegative_kernel(arrays, kernel, power):
    with pytest.raises(ValueError, match=named("normalize")):
        call(arrays, kernel=kernel, power=power, normalize=True)
    call(arrays, kernel=kernel, power=power, normalize=False)  # allowed unnormalised


@pytest.mark.parametrize("power", [0, -2, 2.0, 2.5, True, "2", None])
def test_bad_power(arrays, power):
    with pytest.raises(ERRORS, match=named("power")):
        call(arrays, power=power, normalize=False)


def test_positive_log_gate(xp, arrays):
    gate = np.zeros((2, 6))
    gate[1, 3] = 1e-3
    with pytest.raises(ValueError, match=named("log_gate")):
        call(arrays, log_gate=convert({"g": gate}, xp, "float64")["g"])


def test_nan_log_gate(xp, arrays):
    gate = np.zeros((2, 6))
    gate[0, 0] = np.nan
    with pytest.raises(ValueError, match=named("log_gate")):
        call(arrays, log_gate=convert({"g": gate}, xp, "float64")["g"])


@pytest.mark.parametrize("shape", [(2, 5), (2, 6, 1), (3, 6)], ids=["T", "extra-axis", "batch"])
def test_log_gate_wrong_shape(xp, arrays, shape):
    with pytest.raises(ERRORS, match=named("log_gate")):
        call(arrays, log_gate=other(xp, shape) * 0.0)


def test_rotary_odd_d(xp):
    inputs = convert(make_inputs(T=5, d=3, e=2), xp, "float64")
    with pytest.raises(ValueError, match=named("rotary")):
        call(inputs, rotary=other(xp, (5, 1)))


@pytest.mark.parametrize(
    "shape", [(2, 6, 3), (2, 5, 2), (2, 6), (3, 6, 2)], ids=["d/2", "T", "rank", "batch"]
)
def test_rotary_wrong_shape(xp, arrays, shape):
    with pytest.raises(ERRORS, match=named("rotary")):
        call(arrays, rotary=other(xp, shape))


@pytest.mark.parametrize("shape", [(2, 5), (3, 6)], ids=["T", "batch"])
def test_proportions_wrong_shape(xp, arrays, shape):
    a = other(xp, shape) * 0.0
    with pytest.raises(ERRORS, match=named("proportions")):
        call(arrays, proportions=(a, arrays["proportions"][1]))


def test_proportions_not_a_pair(arrays):
    with pytest.raises(ERRORS, match=named("proportions")):
        call(arrays, proportions=arrays["proportions"][0])


@pytest.mark.parametrize("value", [-0.5, 1.5])
def test_proportions_out_of_range(xp, arrays, value):
    b = np.full((2, 6), value)
    with pytest.raises(ValueError, match=named("proportions")):
        call(arrays, proportions=(arrays["proportions"][0], convert({"b": b}, xp, "float64")["b"]))


@pytest.mark.parametrize(
    ("name", "value"),
    [("kernel", "softmax"), ("form", "fast"), ("rotary_layout", "diagonal"), ("kernel", None)],
)
def test_unknown_choice(arrays, name, value):
    with pytest.raises(ERRORS, match=named(name)):
        call(arrays, **{name: value})


@pytest.mark.parametrize("value", [0, -1, -64, 1.5, True])
def test_bad_chunk_size(arrays, value):
    with pytest.raises(ERRORS, match=named("chunk_size")):
        call(arrays, chunk_size=value, form="chunked")


@pytest.mark.parametrize("value", [0.0, -1.0, math.nan, math.inf, -math.inf, "1"])
def test_bad_scale(arrays, value):
    with pytest.raises(ERRORS, match=named("scale")):
        call(arrays, scale=value)


@pytest.mark.parametrize("value", [-1e-12, -1.0, math.nan, math.inf])
def test_bad_eps(arrays, value):
    with pytest.raises(ERRORS, match=named("eps")):
        call(arrays, eps=value)


@pytest.mark.parametrize("value", [1, None, "yes"])
def test_bad_normalize(arrays, value):
    with pytest.raises(TypeError, match=named("normalize")):
        call(arrays, normalize=value)


@pytest.mark.parametrize("name", ["q", "k", "v"])
@pytest.mark.parametrize("dtype", ["int64", "int32", "bool", "complex128"])
def test_bad_dtype(xp, name, dtype):
    inputs = make_inputs(T=4, d=2, e=2)
    arrays = convert(inputs, xp, "float64")
    if dtype == "complex128" and not hasattr(xp, "complex128"):
        pytest.fail(f"{xp.__name__} has no complex128")
    raw = (np.abs(inputs[name]) > 0.5) if dtype == "bool" else inputs[name] * 3
    arrays[name] = xp.asarray(np.asarray(raw).astype(dtype), dtype=getattr(xp, dtype))
    with pytest.raises(TypeError, match=named(name)):
        call(arrays)


@pytest.mark.parametrize("name", ["q", "k", "v"])
def test_extended_precision_is_refused(name):
    """np.longdouble (float128 here) was accepted, reported as float128 and computed in float32
    (issue 12): refused, naming the argument and the dtypes that are computed."""
    inputs = make_inputs(T=4, d=2, e=2)
    arrays = {key: inputs[key].astype(np.longdouble) if key == name else inputs[key] for key in "qkv"}
    with pytest.raises(TypeError, match=rf"{name} must have one of the dtypes .*float64.*got float128"):
        sympow.attention(arrays["q"], arrays["k"], arrays["v"])


@pytest.mark.parametrize("name", ["log_gate", "rotary"])
def test_bad_dtype_of_optional_arrays(xp, arrays, name):
    bad = xp.asarray(np.zeros(tuple(arrays[name].shape), dtype=np.int64), dtype=xp.int64)
    with pytest.raises(TypeError, match=named(name)):
        call(arrays, **{name: bad})


def test_mixed_dtypes(xp, arrays):
    k32 = convert(make_inputs(batch=(2,), T=6, d=4, e=3), xp, "float32")["k"]
    with pytest.raises(TypeError, match=named("k")):
        call(arrays, k=k32)


def test_two_libraries(xp, arrays):
    """numpy q with another library's k (and the reverse) is refused, naming the argument."""
    foreign_name = "torch" if xp.__name__ == "numpy" else "numpy"
    foreign = pytest.importorskip(foreign_name)
    inputs = make_inputs(batch=(2,), T=6, d=4, e=3)
    foreign_k = convert(inputs, foreign, "float64")["k"]
    with pytest.raises(TypeError, match=named("k")):
        call(arrays, k=foreign_k)
    foreign_gate = convert({"g": -np.abs(inputs["q"][..., 0])}, foreign, "float64")["g"]
    with pytest.raises(TypeError, match=named("log_gate")):
        call(arrays, log_gate=foreign_gate)


def test_plain_lists_are_refused(arrays):
    with pytest.raises(TypeError, match=named("q")):
        call(arrays, q=[[1.0, 2.0, 3.0, 4.0]] * 6)


@pytest.fixture
def state_of(xp):
    """(arrays, state) of a sympow p=2 call with rotary, d=4, e=3, batch (2,)."""
    inputs = make_inputs(batch=(2,), T=6, d=4, e=3, seed=0, rotary=True)
    arrays = convert(inputs, xp, "float64")
    _, state = call(arrays, rotary=arrays["rotary"], return_state=True)
    return arrays, state


@pytest.mark.parametrize(
    "field", ["S-feature", "S-e", "z", "mu", "batch", "proportions", "power", "not-a-state"]
)
def test_initial_state_that_does_not_fit(xp, state_of, field):
    arrays, state = state_of
    kwargs = {"rotary": arrays["rotary"]}
    if field == "S-feature":
        state = state._replace(S=other(xp, (2, 11, 3)))
    elif field == "S-e":
        state = state._replace(S=other(xp, (2, 10, 4)))
    elif field == "z":
        state = state._replace(z=other(xp, (2, 9)))
    elif field == "mu":
        state = state._replace(mu=other(xp, (2, 3)))
    elif field == "batch":
        state = state._replace(log_scale=other(xp, (3,)))
    elif field == "proportions":  # a state without the cos/sin halves
        inputs = make_inputs(batch=(2,), T=6, d=4, e=3, proportions=True)
        kwargs["proportions"] = convert(inputs, xp, "float64")["proportions"]
    elif field == "power":  # D = C(4+3, 4) = 35 for p = 4, not 10
        kwargs["power"] = 4
    else:
        state = tuple(state)
    with pytest.raises(ERRORS, match=named("initial_state")):
        call(arrays, initial_state=state, **kwargs)


@pytest.mark.parametrize(("field", "value"), [("S", np.nan), ("z", np.inf), ("log_scale", np.nan),
                                              ("log_scale", np.inf), ("mu", np.nan)])  # fmt: skip
def test_a_state_with_nan_or_inf_is_refused(xp, field, value):
    """NaN or inf inside a State was never checked: a NaN log_scale gave finite wrong output, an inf one
    inf (issue 12). Refused, naming the field; log_scale = -inf (an empty state) stays valid."""
    arrays = convert(make_inputs(batch=(2,), T=6, d=4, e=3, seed=1, rotary=True), xp, "float64")
    _, state = sympow.attention(
        arrays["q"], arrays["k"], arrays["v"], rotary=arrays["rotary"], return_state=True
    )
    raw = np.array(to_numpy(getattr(state, field)), copy=True)
    raw.reshape(-1)[0] = value
    bad = state._replace(**{field: xp.asarray(raw)})
    with pytest.raises(ValueError, match=rf"initial_state\.{field} must be finite"):
        sympow.attention(arrays["q"], arrays["k"], arrays["v"], rotary=arrays["rotary"], initial_state=bad)
    empty = state._replace(
        log_scale=xp.asarray(np.full(raw.shape if field == "log_scale" else (2,), -np.inf))
    )
    sympow.attention(arrays["q"], arrays["k"], arrays["v"], rotary=arrays["rotary"], initial_state=empty)
