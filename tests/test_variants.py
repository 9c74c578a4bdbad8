"""The named variants (src/sympow/variants.py) against their formulas, written out here from math.md and
from the peers' conventions (math.md section 8), in every form and namespace, float32 and float64."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import sympow
from sympow.testing import assert_close, assert_close_rows, condition_numbers, convert, make_inputs, to_numpy
from sympow.testing.strategies import FORMS, chunk_sizes, seeds
from sympow.variants import VARIANTS, ProportionNet, log_sigmoid, variant_parameters
from tests.brute_force import brute_force
from tests.conftest import NAMESPACES, import_namespace
from tests.spec.test_forms import check_result_type

NAMES = ("based", "conformal_sympow", "leapformer", "rebased")
ERRORS = (ValueError, TypeError)


@pytest.fixture(scope="session", params=[name for name in NAMESPACES if name != "jax"])
def eager_xp(request):
    """Every namespace but JAX, which compiles each new shape and static option (seconds each): JAX runs
    ``test_variant_matches_its_formula`` (every variant and form) and the input checks only."""
    return import_namespace(request.param)


# ------------------------------------------------------------------------------------------------------
# The formulas, in NumPy float64, independent of the package


def log_sigmoid_np(x):
    """log(1 / (1 + exp(-x))) = -log(1 + exp(-x))."""
    return -np.logaddexp(0.0, -np.asarray(x, dtype=np.float64))


def frequencies_np(d, N):
    """theta_m = 2 pi / N^(2m/d)."""
    return 2 * np.pi / float(N) ** (2 * np.arange(d // 2) / d)


def layer_norm_np(x, gamma, beta, eps):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return gamma[..., None, :] * (x - mean) / np.sqrt(var + eps) + beta[..., None, :]


def net_np(x, net):
    w1, b1, w2, b2 = (np.asarray(w, dtype=np.float64) for w in net)
    hidden = np.maximum(x @ w1 + b1, 0.0)
    return (1.0 / (1.0 + np.exp(-(hidden @ w2 + b2))))[..., 0]


def relu(x):
    return np.maximum(x, 0.0)


def attention_call(name, inputs, params, *, eps=0.0):
    """(q, k, v, options) of the attention call that variant ``name``'s formula makes, in float64."""
    q, k, v = (np.asarray(inputs[key], dtype=np.float64) for key in "qkv")
    d = q.shape[-1]
    if name == "based":
        return q, k, v, dict(kernel="taylor", power=2, eps=eps)
    if name == "conformal_sympow":
        log_gate = log_sigmoid_np(params.get("gate_bias", 6.9) + params["gate_logits"])
        beta = 1 + np.tanh(params["rotary_logits"])
        rotary = beta[..., None] * frequencies_np(d, params["max_length"])
        return q, k, v, dict(power=params.get("power", 2), log_gate=log_gate, rotary=rotary, eps=eps)
    if name == "rebased":
        gamma, beta = params["gamma"], params["beta"]
        ln_eps = params.get("ln_eps", 1e-5)
        q_hat, k_hat = layer_norm_np(q, gamma, beta, ln_eps), layer_norm_np(k, gamma, beta, ln_eps)
        return q_hat, k_hat, v, dict(power=2, eps=eps)
    net_q, net_k = params["proportion_net"]
    proportions = (net_np(relu(q * d**-0.5), net_q), net_np(relu(k), net_k))
    return q, k, v, dict(kernel="relu", proportions=proportions, eps=eps)


def expected(name, inputs, params, *, eps=0.0):
    """y of variant ``name`` from its definition, through the float64 double loop (and, for LeaPformer's
    floor, N and Z from two unnormalised loops)."""
    q, k, v, options = attention_call(name, inputs, params, eps=eps)
    floor = params.get("denominator_floor")
    if floor is None:
        return brute_force(q, k, v, **options)
    options = dict(options, eps=0.0)
    N = brute_force(q, k, v, normalize=False, **options)
    Z = brute_force(q, k, np.ones_like(v[..., :1]), normalize=False, **options)
    return N / np.maximum(Z + eps, floor)


def assert_matches(y, y_ref, name, inputs, params, *, dtype, form, eps=0.0, what=""):
    """y within the tolerance table of y_ref, plus the condition term of math.md 9 for the forms with a
    state path (recurrent, chunked and auto) whose dtype is float32 by default."""
    if form == "parallel":
        assert_close(y, y_ref, inputs["v"], dtype_name=dtype, normalize=True, what=what)
        return
    q, k, v, options = attention_call(name, inputs, params, eps=eps)
    c = condition_numbers(q, k, v, **options)
    assert_close_rows(y, y_ref, inputs["v"], dtype_name=dtype, normalize=True, condition=c, what=what)


def as_float64(tree):
    """NumPy arrays (in tuples too) as float64 arrays; numbers unchanged."""
    if isinstance(tree, dict):
        return {key: as_float64(value) for key, value in tree.items()}
    if isinstance(tree, tuple):
        return tuple(as_float64(value) for value in tree)
    return np.asarray(tree, dtype=np.float64) if isinstance(tree, np.ndarray) else tree


def rounded(tree, dtype):
    """The float64 values of ``tree`` after rounding its arrays to ``dtype``."""
    return as_float64(convert(tree, np, dtype))


def causal(T):
    return np.tril(np.ones((T, T)))


# ------------------------------------------------------------------------------------------------------
# Public names, every variant in every form and namespace


def test_public_names():
    for name in NAMES:
        assert name in sympow.__all__
        assert getattr(sympow, name) is VARIANTS[name]
        doc = VARIANTS[name].__doc__
        assert doc and "Shapes" in doc, f"{name} documents its shapes"
    assert set(VARIANTS) == set(NAMES)


@pytest.mark.parametrize("form", (*FORMS, "auto"))
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", NAMES)
def test_variant_matches_its_formula(xp, name, dtype, form):
    """variant(q, k, v, **variant_parameters(...)) equals the double loop on the inputs its formula builds."""
    batch, T, d, e = (2, 3), 13, 4, 3
    inputs = make_inputs(batch=batch, T=T, d=d, e=e, seed=len(name), dtype=dtype)
    params = variant_parameters(name, batch, T, d, seed=3)
    arrays = convert(inputs, xp, dtype)
    y = VARIANTS[name](
        arrays["q"], arrays["k"], arrays["v"], form=form, chunk_size=4, **convert(params, xp, dtype)
    )
    check_result_type(y, arrays["q"], (*batch, T, e))
    params = rounded(params, dtype)
    y_ref = expected(name, inputs, params)
    assert_matches(y, y_ref, name, inputs, params, dtype=dtype, form=form, what=f"{name} {form}")


def split_tokens(x, t, axis):
    """(first t tokens, rest) of x along ``axis`` (negative)."""
    index = [slice(None)] * x.ndim
    head, tail = list(index), list(index)
    head[axis], tail[axis] = slice(None, t), slice(t, None)
    return x[tuple(head)], x[tuple(tail)]


@given(
    name=st.sampled_from(NAMES),
    T=st.integers(2, 30),
    seed=seeds(),
    dtype=st.sampled_from(["float64", "float32"]),
    data=st.data(),
)
def test_variant_split_and_resume(eager_xp, name, T, seed, dtype, data):
    """Two calls threading the state equal one call, in drawn forms (LeaPformer's floor included: its
    state has e + 1 value columns)."""
    batch, d, e = (2,), 4, 3
    inputs = make_inputs(batch=batch, T=T, d=d, e=e, seed=seed % 1000, dtype=dtype)
    params = variant_parameters(name, batch, T, d, seed=seed)
    t = data.draw(st.integers(1, T - 1), label="split")
    forms = [data.draw(st.sampled_from(FORMS), label="form") for _ in range(2)]
    chunks = (data.draw(chunk_sizes(t)), data.draw(chunk_sizes(T - t)))
    variant = VARIANTS[name]
    whole = convert({**inputs, **params}, np, "float64")
    y_ref = variant(whole.pop("q"), whole.pop("k"), whole.pop("v"), form="parallel", **whole)

    token_axis = {"q": -2, "k": -2, "v": -2, "gate_logits": -1, "rotary_logits": -1}
    head, tail = {}, {}
    for key, value in {**inputs, **params}.items():
        if key in token_axis:
            head[key], tail[key] = split_tokens(value, t, token_axis[key])
        else:
            head[key] = tail[key] = value
    a, b = convert(head, eager_xp, dtype), convert(tail, eager_xp, dtype)
    y1, state = variant(
        a.pop("q"), a.pop("k"), a.pop("v"), form=forms[0], chunk_size=chunks[0], return_state=True, **a
    )
    if name == "leapformer":
        assert state.S.shape[-1] == e + 1 and state.S.shape[-2] == 2 * d
    y2 = variant(
        b.pop("q"), b.pop("k"), b.pop("v"), form=forms[1], chunk_size=chunks[1], initial_state=state, **b
    )
    y = np.concatenate([to_numpy(y1), to_numpy(y2)], axis=-2)
    assert_close(
        y, y_ref, inputs["v"], dtype_name=dtype, normalize=True,
        what=f"{name} split at {t}: {forms}, chunks {chunks}",
    )  # fmt: skip


# ------------------------------------------------------------------------------------------------------
# conformal_sympow


@st.composite
def conformal_cases(draw):
    batch = draw(st.lists(st.integers(1, 3), max_size=2).map(tuple), label="batch")
    T = draw(st.integers(1, 32), label="T")
    d = 2 * draw(st.integers(1, 4), label="d / 2")
    power = draw(st.sampled_from([2, 4]), label="power")
    params = variant_parameters("conformal_sympow", batch, T, d, seed=draw(seeds(), label="seed"))
    params["max_length"] = draw(st.integers(1, 100_000), label="max_length")
    params["gate_bias"] = draw(st.floats(-3, 8), label="gate_bias")
    params["power"] = power
    inputs = make_inputs(batch=batch, T=T, d=d, e=draw(st.integers(1, 4)), seed=draw(seeds()))
    return inputs, params


@given(case=conformal_cases(), form=st.sampled_from(FORMS), dtype=st.sampled_from(["float64", "float32"]))
def test_conformal_sympow_matches_brute_force(eager_xp, case, form, dtype):
    inputs, params = case
    arrays = convert(inputs, eager_xp, dtype)
    y = sympow.conformal_sympow(
        arrays["q"], arrays["k"], arrays["v"], form=form, chunk_size=5, **convert(params, eager_xp, dtype)
    )
    x, params = rounded(inputs, dtype), rounded(params, dtype)
    y_ref = expected("conformal_sympow", x, params)
    assert_matches(y, y_ref, "conformal_sympow", x, params, dtype=dtype, form=form, what=form)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("off", [-1e4, -np.inf])
def test_conformal_without_rotation_is_gating_only(eager_xp, form, dtype, off):
    """tanh(r) = -1 makes beta = 0: no rotation, only the gates logsigmoid(c + u)."""
    batch, T, d = (2,), 19, 6
    inputs = make_inputs(batch=batch, T=T, d=d, e=3, seed=1, dtype=dtype)
    params = variant_parameters("conformal_sympow", batch, T, d, seed=2)
    params["rotary_logits"] = np.full((*batch, T), off)
    arrays = convert({**inputs, **params}, eager_xp, dtype)
    y, state = sympow.conformal_sympow(
        arrays["q"], arrays["k"], arrays["v"], gate_logits=arrays["gate_logits"],
        rotary_logits=arrays["rotary_logits"], max_length=T, form=form, chunk_size=4, return_state=True,
    )  # fmt: skip
    assert not np.any(to_numpy(state.mu))
    log_gate = convert({"g": log_sigmoid_np(6.9 + to_numpy(arrays["gate_logits"]))}, eager_xp, dtype)["g"]
    y_ref = sympow.attention(
        arrays["q"], arrays["k"], arrays["v"], log_gate=log_gate, form=form, chunk_size=4
    )
    assert_close(y, to_numpy(y_ref), inputs["v"], dtype_name=dtype, normalize=True, what="gating only")


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("on", [1e4, np.inf])
def test_conformal_with_open_gates_is_plain_rotary_sympow(eager_xp, form, dtype, on):
    """Very large gate logits give logsigmoid = 0 exactly: every gate is 1, leaving sympow with the
    rotary increments (1 + tanh r) theta."""
    batch, T, d = (2,), 19, 6
    inputs = make_inputs(batch=batch, T=T, d=d, e=3, seed=1, dtype=dtype)
    params = variant_parameters("conformal_sympow", batch, T, d, seed=2)
    params["gate_logits"] = np.full((*batch, T), on)
    arrays = convert({**inputs, **params}, eager_xp, dtype)
    y = sympow.conformal_sympow(
        arrays["q"], arrays["k"], arrays["v"], gate_logits=arrays["gate_logits"],
        rotary_logits=arrays["rotary_logits"], max_length=50, form=form, chunk_size=4,
    )  # fmt: skip
    beta = 1 + np.tanh(to_numpy(arrays["rotary_logits"]))
    rotary = convert({"w": beta[..., None] * frequencies_np(d, 50)}, eager_xp, "float64")["w"]
    y_ref = sympow.attention(arrays["q"], arrays["k"], arrays["v"], rotary=rotary, form=form, chunk_size=4)
    assert_close(y, to_numpy(y_ref), inputs["v"], dtype_name=dtype, normalize=True, what="open gates")


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_log_sigmoid_is_stable(xp, dtype):
    """-softplus(-x): exactly 0 for large x, finite and <= 0 everywhere else, -inf at -inf, no warning."""
    values = np.array([-np.inf, -1e30, -1e4, -90.0, -1.0, 0.0, 1.0, 40.0, 1e4, 1e30, np.inf])
    x = convert({"x": values}, xp, dtype)["x"]
    got = to_numpy(log_sigmoid(x, sympow.variants.array_namespace(x)))
    assert got[0] == -np.inf and np.all(np.isfinite(got[1:])) and np.all(got <= 0)
    assert np.all(got[-3:] == 0.0)
    finite = np.isfinite(values)
    rtol = 1e-15 if dtype == "float64" else 1e-6
    np.testing.assert_allclose(got[finite], log_sigmoid_np(values[finite]), rtol=rtol)


# ------------------------------------------------------------------------------------------------------
# leapformer


def leapformer_formula(q, k, v, a, b):
    """LeaPformer's causal training formula, written from its definition: relu features with q pre-scaled
    by d^-1/2, the cos and sin halves of the re-weighting; returns (N, Z)."""
    d = q.shape[-1]
    q, k = relu(q * d**-0.5), relu(k)
    q_cos, q_sin = q * np.cos(np.pi / 2 * a)[..., None], q * np.sin(np.pi / 2 * a)[..., None]
    k_cos, k_sin = k * np.cos(np.pi / 2 * b)[..., None], k * np.sin(np.pi / 2 * b)[..., None]
    weights = (q_cos @ np.swapaxes(k_cos, -1, -2) + q_sin @ np.swapaxes(k_sin, -1, -2)) * causal(q.shape[-2])
    return weights @ v, weights.sum(-1, keepdims=True)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("given_as", ["proportions", "net"])
def test_leapformer_matches_its_floor_formula(eager_xp, form, dtype, given_as):
    """y = N / max(Z, 0.1) as in LeaPformer's code; small queries make the floor act on many rows."""
    batch, T, d = (2,), 24, 4
    inputs = make_inputs(batch=batch, T=T, d=d, e=3, seed=8, q_scale=0.1, proportions=True, dtype=dtype)
    x = {key: to_numpy(value) if not isinstance(value, tuple) else value for key, value in inputs.items()}
    nets = variant_parameters("leapformer", batch, T, d, seed=4)["proportion_net"]
    if given_as == "net":
        nets = convert({"n": nets}, np, dtype)["n"]
        a, b = net_np(relu(x["q"] * d**-0.5), nets[0]), net_np(relu(x["k"]), nets[1])
        options = {"proportion_net": convert({"n": nets}, eager_xp, dtype)["n"]}
    else:
        a, b = (np.asarray(p, dtype=np.float64) for p in x["proportions"])
        options = {"proportions": convert({"p": x["proportions"]}, eager_xp, dtype)["p"]}
    N, Z = leapformer_formula(x["q"], x["k"], x["v"], a, b)
    y_ref = N / np.maximum(Z, 0.1)
    assert np.mean(Z < 0.1) > 0.2, "the floor must be exercised"
    arrays = convert(inputs, eager_xp, dtype)
    y = sympow.leapformer(
        arrays["q"], arrays["k"], arrays["v"], denominator_floor=0.1, form=form, chunk_size=5, **options
    )
    check_result_type(y, arrays["q"], (*batch, T, 3))
    assert_close(y, y_ref, x["v"], dtype_name=dtype, normalize=True, what=f"{given_as} {form}")


@pytest.mark.parametrize("form", FORMS)
def test_leapformer_without_floor_is_relu_with_proportions(eager_xp, form):
    batch, T, d = (3,), 17, 5
    inputs = make_inputs(batch=batch, T=T, d=d, e=2, seed=9)
    net = variant_parameters("leapformer", batch, T, d, seed=5)["proportion_net"][0]
    arrays = convert({**inputs, "net": net}, eager_xp, "float64")
    shared = sympow.leapformer(arrays["q"], arrays["k"], arrays["v"], proportion_net=arrays["net"], form=form)
    pair = sympow.leapformer(
        arrays["q"], arrays["k"], arrays["v"], proportion_net=(arrays["net"], arrays["net"]), form=form
    )
    y_ref = expected("leapformer", inputs, {"proportion_net": (net, net)}, eps=0.25)
    with_eps = sympow.leapformer(
        arrays["q"],
        arrays["k"],
        arrays["v"],
        proportion_net=ProportionNet(*arrays["net"]),
        form=form,
        eps=0.25,
    )
    assert_close(with_eps, y_ref, inputs["v"], dtype_name="float64", normalize=True, what="eps")
    assert_close(shared, to_numpy(pair), inputs["v"], dtype_name="float64", normalize=True, what="shared")
    y_ref = expected("leapformer", inputs, {"proportion_net": (net, net)})
    assert_close(shared, y_ref, inputs["v"], dtype_name="float64", normalize=True, what=form)


# ------------------------------------------------------------------------------------------------------
# rebased and based, and the flash-linear-attention conventions


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_rebased_is_sympow_on_layer_normed_inputs(eager_xp, form, dtype):
    batch, T, d = (2, 3), 15, 6
    inputs = make_inputs(batch=batch, T=T, d=d, e=2, seed=10, dtype=dtype)
    params = variant_parameters("rebased", batch[-1:], T, d, seed=6)  # per head: [3, d]
    x = {key: to_numpy(value) for key, value in convert({**inputs, **params}, np, dtype).items()}
    q_hat = layer_norm_np(x["q"], x["gamma"], x["beta"], 1e-5)
    k_hat = layer_norm_np(x["k"], x["gamma"], x["beta"], 1e-5)
    arrays = convert({**inputs, **params}, eager_xp, dtype)
    y = sympow.rebased(
        arrays["q"],
        arrays["k"],
        arrays["v"],
        gamma=arrays["gamma"],
        beta=arrays["beta"],
        form=form,
        chunk_size=4,
    )
    check_result_type(y, arrays["q"], (*batch, T, 2))
    y_ref = sympow.attention(q_hat, k_hat, x["v"], power=2, form="parallel")
    assert_close(y, y_ref, x["v"], dtype_name=dtype, normalize=True, what=form)


@pytest.mark.parametrize("factor", [1e-3, 0.37, 5.0, 1e3])
def test_rebased_ignores_a_positive_rescaling_of_q(eager_xp, factor):
    """LN(c q) = LN(q) for c > 0 (exactly so with ln_eps = 0; to 1e-5 / (c^2 var) otherwise)."""
    batch, T, d = (2,), 20, 8
    inputs = make_inputs(batch=batch, T=T, d=d, e=3, seed=11)
    params = variant_parameters("rebased", batch, T, d, seed=7)
    arrays = convert({**inputs, **params, "scaled": factor * inputs["q"]}, eager_xp, "float64")
    for form in FORMS:
        common = dict(gamma=arrays["gamma"], beta=arrays["beta"], ln_eps=0.0, form=form, chunk_size=6)
        y = sympow.rebased(arrays["q"], arrays["k"], arrays["v"], **common)
        y_scaled = sympow.rebased(arrays["scaled"], arrays["k"], arrays["v"], **common)
        assert_close(y_scaled, to_numpy(y), inputs["v"], dtype_name="float64", normalize=True, what=form)


def fla_naive_parallel(q, k, v, kind):
    """flash-linear-attention's naive parallel based / rebased, written from its formula ([b, h, t, d]):
    s = d^-1/2 q.k; A = 1 + s + s^2/2 (based) or s^2 (rebased), causal; o = A v / (A 1 + 1e-6)."""
    s = (q * q.shape[-1] ** -0.5) @ np.swapaxes(k, -1, -2)
    A = (1 + s + s**2 / 2 if kind == "based" else s**2) * causal(q.shape[-2])
    return (A @ v) / (A.sum(-1, keepdims=True) + 1e-6)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_based_and_rebased_match_flash_linear_attention(eager_xp, form, dtype):
    batch, T, d = (2, 2), 26, 16  # [b, h, t, d]
    inputs = make_inputs(batch=batch, T=T, d=d, e=4, seed=12, dtype=dtype)
    x = {key: to_numpy(value) for key, value in inputs.items()}
    arrays = convert(inputs, eager_xp, dtype)
    y = sympow.based(arrays["q"], arrays["k"], arrays["v"], eps=1e-6, form=form, chunk_size=8)
    y_ref = fla_naive_parallel(x["q"], x["k"], x["v"], "based")
    assert_close(y, y_ref, x["v"], dtype_name=dtype, normalize=True, what=f"based {form}")

    params = convert(variant_parameters("rebased", batch[-1:], T, d, seed=8), np, dtype)
    g, b = to_numpy(params["gamma"]), to_numpy(params["beta"])
    y_ref = fla_naive_parallel(
        layer_norm_np(x["q"], g, b, 1e-5), layer_norm_np(x["k"], g, b, 1e-5), x["v"], "rebased"
    )
    p = convert(params, eager_xp, dtype)
    y = sympow.rebased(
        arrays["q"],
        arrays["k"],
        arrays["v"],
        gamma=p["gamma"],
        beta=p["beta"],
        eps=1e-6,
        form=form,
        chunk_size=8,
    )
    assert_close(y, y_ref, x["v"], dtype_name=dtype, normalize=True, what=f"rebased {form}")


def test_based_unnormalized_is_the_taylor_sum(eager_xp):
    inputs = make_inputs(batch=(2,), T=9, d=3, e=2, seed=13)
    arrays = convert(inputs, eager_xp, "float64")
    y = sympow.based(arrays["q"], arrays["k"], arrays["v"], normalize=False)
    s = 3**-0.5 * inputs["q"] @ np.swapaxes(inputs["k"], -1, -2)
    y_ref = ((1 + s + s**2 / 2) * causal(9)) @ inputs["v"]
    assert_close(y, y_ref, dtype_name="float64", normalize=False)


# ------------------------------------------------------------------------------------------------------
# Bad input


@pytest.fixture
def base(xp):
    batch, T, d = (2,), 6, 4
    inputs = make_inputs(batch=batch, T=T, d=d, e=3, seed=0, proportions=True)
    params = {name: variant_parameters(name, batch, T, d, seed=1) for name in NAMES}
    return xp, convert(inputs, xp, "float64"), {name: convert(p, xp, "float64") for name, p in params.items()}


def arr(xp, shape, dtype="float64", value=0.0):
    return convert({"x": np.full(shape, value)}, xp, dtype)["x"]


BAD = {
    # name: (variant, lambda xp, params -> overrides, error, pattern)
    "gate_logits-shape": (
        "conformal_sympow",
        lambda xp, p: {"gate_logits": arr(xp, (2, 5))},
        ValueError,
        "gate_logits",
    ),
    "gate_logits-dtype": (
        "conformal_sympow",
        lambda xp, p: {"gate_logits": convert({"x": np.zeros((2, 6))}, xp, "int64")["x"]},
        TypeError,
        "gate_logits",
    ),
    "gate_logits-nan": (
        "conformal_sympow",
        lambda xp, p: {"gate_logits": arr(xp, (2, 6), value=np.nan)},
        ValueError,
        "gate_logits",
    ),
    "gate_logits-list": (
        "conformal_sympow",
        lambda xp, p: {"gate_logits": [0.0] * 6},
        TypeError,
        "gate_logits",
    ),
    "gate_logits-batch": (
        "conformal_sympow",
        lambda xp, p: {"gate_logits": arr(xp, (3, 6))},
        ValueError,
        "gate_logits",
    ),
    "rotary_logits-shape": (
        "conformal_sympow",
        lambda xp, p: {"rotary_logits": arr(xp, (2, 6, 1))},
        ValueError,
        "rotary_logits",
    ),
    "max_length-zero": ("conformal_sympow", lambda xp, p: {"max_length": 0}, ValueError, "max_length"),
    "max_length-float": ("conformal_sympow", lambda xp, p: {"max_length": 6.0}, TypeError, "max_length"),
    "gate_bias-nan": ("conformal_sympow", lambda xp, p: {"gate_bias": float("nan")}, ValueError, "gate_bias"),
    "odd-power": ("conformal_sympow", lambda xp, p: {"power": 3}, ValueError, "power"),
    "net-w1-shape": (
        "leapformer",
        lambda xp, p: {
            "proportion_net": ((arr(xp, (5, 4)), *p["proportion_net"][0][1:]), p["proportion_net"][1])
        },
        ValueError,
        re.escape("proportion_net[0].w1"),
    ),
    "net-w2-shape": (
        "leapformer",
        lambda xp, p: {
            "proportion_net": (
                p["proportion_net"][0],
                (*p["proportion_net"][1][:2], arr(xp, (4, 2)), p["proportion_net"][1][3]),
            )
        },
        ValueError,
        re.escape("proportion_net[1].w2"),
    ),
    "net-b2-shape": (
        "leapformer",
        lambda xp, p: {"proportion_net": (*p["proportion_net"][0][:3], arr(xp, (2,)))},
        ValueError,
        re.escape("proportion_net.b2"),
    ),
    "net-three-arrays": (
        "leapformer",
        lambda xp, p: {"proportion_net": p["proportion_net"][0][:3]},
        TypeError,
        "proportion_net",
    ),
    "net-dtype": (
        "leapformer",
        lambda xp, p: {
            "proportion_net": (*p["proportion_net"][0][:3], convert({"x": np.zeros(1)}, xp, "int32")["x"])
        },
        TypeError,
        re.escape("proportion_net.b2"),
    ),
    "net-and-proportions": (
        "leapformer",
        lambda xp, p: {"proportions": "given"},
        ValueError,
        "exactly one of proportions",
    ),
    "neither": (
        "leapformer",
        lambda xp, p: {"proportion_net": None},
        ValueError,
        "exactly one of proportions",
    ),
    "floor-zero": ("leapformer", lambda xp, p: {"denominator_floor": 0.0}, ValueError, "denominator_floor"),
    "floor-unnormalized": ("leapformer", lambda xp, p: {"normalize": False}, ValueError, "denominator_floor"),
    "proportions-above-1": (
        "leapformer",
        lambda xp, p: {"proportion_net": None, "proportions": (arr(xp, (2, 6), value=1.5), arr(xp, (2, 6)))},
        ValueError,
        re.escape("proportions[0] (a)"),
    ),
    "proportions-shape": (
        "leapformer",
        lambda xp, p: {"proportion_net": None, "proportions": (arr(xp, (2, 6)), arr(xp, (2, 7)))},
        ValueError,
        re.escape("proportions[1] (b)"),
    ),
    "gamma-shape": ("rebased", lambda xp, p: {"gamma": arr(xp, (2, 5))}, ValueError, "gamma"),
    "beta-batch": ("rebased", lambda xp, p: {"beta": arr(xp, (3, 4))}, ValueError, "beta"),
    "beta-scalar": ("rebased", lambda xp, p: {"beta": 0.0}, TypeError, "beta"),
    "gamma-dtype": (
        "rebased",
        lambda xp, p: {"gamma": convert({"x": np.ones(4)}, xp, "int64")["x"]},
        TypeError,
        "gamma",
    ),
    "ln_eps-negative": ("rebased", lambda xp, p: {"ln_eps": -1.0}, ValueError, "ln_eps"),
    "based-q-list": ("based", lambda xp, p: {"q": [[0.0] * 4] * 6}, TypeError, r"\bq\b"),
}


@pytest.mark.parametrize("which", list(BAD))
def test_bad_parameters_are_named(base, which):
    xp, arrays, params = base
    name, change, error, pattern = BAD[which]
    kwargs = dict(params[name])
    overrides = change(xp, kwargs)
    if overrides.get("proportions") == "given":
        overrides["proportions"] = arrays["proportions"]
    kwargs.update(overrides)
    q = kwargs.pop("q", arrays["q"])
    with pytest.raises(error, match=pattern):
        VARIANTS[name](q, arrays["k"], arrays["v"], **kwargs)


def test_odd_head_dimension_is_refused_by_conformal(xp):
    inputs = make_inputs(batch=(2,), T=6, d=5, e=3, seed=0)
    params = convert(variant_parameters("conformal_sympow", (2,), 6, 5, seed=0), xp, "float64")
    arrays = convert(inputs, xp, "float64")
    with pytest.raises(ValueError, match="even head dimension"):
        sympow.conformal_sympow(arrays["q"], arrays["k"], arrays["v"], **params)


def test_variant_parameters_are_seeded():
    for name in NAMES:
        a = variant_parameters(name, (2,), 7, 4, seed=3)
        b = variant_parameters(name, (2,), 7, 4, seed=3)
        assert set(a) == set(b)
        for key in a:
            np.testing.assert_equal(as_float64(a[key]), as_float64(b[key]))
    with pytest.raises(ValueError, match="name"):
        variant_parameters("cosformer", (), 4, 4)
    assert math.isclose(variant_parameters("leapformer", (), 4, 4)["denominator_floor"], 0.1)
