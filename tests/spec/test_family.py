"""The rest of the seed family: taylor and relu kernels and LeaPformer proportions (math.md sections 1, 2).

Every form against the float64 double loop, split and resume, every namespace, float32 and float64; then
the identities that pin the definitions down from outside the code: cosFormer as a special case of the
proportions, constant proportions as no weight at all, the Taylor kernel as sum_n s^n / n! written out,
and an all-zero relu feature giving 0, never NaN.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import sympow
from sympow.testing import assert_close, convert, make_inputs, to_numpy
from sympow.testing.strategies import FORMS, KERNELS, attention_cases, chunk_sizes
from tests.brute_force import brute_force, reference
from tests.conftest import NAMESPACES, import_namespace
from tests.spec.test_forms import check_result_type
from tests.spec.test_state import resume

ERRORS = (ValueError, TypeError)


@pytest.fixture(scope="session", params=[name for name in NAMESPACES if name != "jax"])
def eager_xp(request):
    """Every namespace but JAX. JAX compiles each new shape and static option (seconds each, whichever
    backend), so it runs only the fixed-shape grid and the input checks (fixture ``xp``); the other tests
    run on the namespaces that execute eagerly."""
    return import_namespace(request.param)


@st.composite
def family_cases(draw, *, kernels=("taylor", "relu"), max_T=32, min_T=1, **flags):
    """A drawn case of the family; unlike ``attention_cases``, a taylor case with even p may be
    normalised (its kernel is positive: math.md section 1)."""
    case = draw(attention_cases(kernels=kernels, min_T=min_T, max_T=max_T, max_p=4, **flags))
    if case.kernel == "taylor" and case.power % 2 == 0 and draw(st.booleans(), label="normalize taylor"):
        case = replace(case, normalize=True, eps=draw(st.sampled_from([0.0, 1e-6, 0.5]), label="eps"))
    return case


def forms_against(case, xp, y_ref):
    for form in FORMS:
        y = case.call(sympow.attention, xp, form=form)
        check_result_type(y, case.arrays(xp)["q"], (*case.batch, case.T, case.e))
        assert_close(
            y, y_ref, case.inputs["v"], dtype_name=case.dtype, normalize=case.normalize,
            what=f"{form} {case}",
        )  # fmt: skip


# ------------------------------------------------------------------------------------------------------
# Against the double loop, in every form


@given(case=family_cases())
def test_taylor_and_relu_match_brute_force(eager_xp, case):
    """taylor (any p, normalised for even p) and relu, with gates, rotary and proportions drawn."""
    forms_against(case, eager_xp, reference(case.inputs, **case.options))


@given(case=family_cases(kernels=KERNELS, proportions=True, max_T=24))
def test_proportions_with_every_kernel_match_brute_force(eager_xp, case):
    """Proportions combined with every kernel, gating and rotary (each drawn)."""
    forms_against(case, eager_xp, reference(case.inputs, **case.options))


KERNEL_GRID = [("taylor", 2), ("relu", 1), ("taylor", 3)]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize(("kernel", "power"), KERNEL_GRID, ids=[f"{k}{p}" for k, p in KERNEL_GRID])
def test_grid_everything_on(xp, kernel, power, dtype):
    """Fixed shapes with gates, rotary and proportions all on, batch axes broadcasting, every form; for
    relu, a query of zeros (every feature zero) gives y = 0, not NaN."""
    normalize = kernel == "relu" or power % 2 == 0
    inputs = make_inputs(
        batch=(2, 3), T=21, d=6, e=3, seed=power, gate=True, rotary=True, proportions=True, dtype=dtype
    )
    inputs["q"] = inputs["q"][:, :1]  # [2, 1, T, d] against [2, 3, ...]
    inputs["proportions"] = (inputs["proportions"][0][0], inputs["proportions"][1])  # [3, T], [2, 3, T]
    arrays = convert(inputs, xp, dtype)
    y_ref = reference(inputs, kernel=kernel, power=power, normalize=normalize)
    for form in (*FORMS, "auto"):
        y = sympow.attention(
            arrays["q"], arrays["k"], arrays["v"], kernel=kernel, power=power, normalize=normalize,
            log_gate=arrays["log_gate"], rotary=arrays["rotary"], proportions=arrays["proportions"],
            form=form, chunk_size=5,
        )  # fmt: skip
        check_result_type(y, arrays["q"], (2, 3, 21, 3))
        assert_close(y, y_ref, inputs["v"], dtype_name=dtype, normalize=normalize, what=form)
        if kernel == "relu":
            zeros = convert({"q": np.zeros_like(inputs["q"])}, xp, dtype)["q"]
            y = sympow.attention(
                zeros, arrays["k"], arrays["v"], kernel=kernel, normalize=normalize,
                log_gate=arrays["log_gate"], rotary=arrays["rotary"], proportions=arrays["proportions"],
                form=form, chunk_size=5,
            )  # fmt: skip
            assert not np.any(to_numpy(y)) and np.isfinite(to_numpy(y)).all(), f"{form}: {to_numpy(y)}"


# ------------------------------------------------------------------------------------------------------
# State: doubled with proportions, resumes exactly


@given(case=family_cases(min_T=2, max_T=40, proportions=True), data=st.data())
def test_split_and_resume_with_proportions(eager_xp, case, data):
    t = data.draw(st.integers(1, case.T - 1), label="split")
    first = data.draw(st.sampled_from(FORMS), label="first form")
    second = data.draw(st.sampled_from(FORMS), label="second form")
    chunks = (data.draw(chunk_sizes(t)), data.draw(chunk_sizes(case.T - t)))
    y_ref = case.call(sympow.attention, np, dtype="float64", form="parallel")
    y = resume(case, eager_xp, t, first, second, chunks)
    assert_close(
        y, y_ref, case.inputs["v"], dtype_name=case.dtype, normalize=case.normalize,
        what=f"split at {t}: {first} then {second}, chunks {chunks}, {case}",
    )  # fmt: skip


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize(("kernel", "power", "D"), [("taylor", 2, 1 + 4 + 10), ("relu", 1, 4)])
def test_proportions_double_the_state(eager_xp, form, kernel, power, D):
    """S [..., 2D, e] and z [..., 2D] with proportions: the cos halves then the sin halves, i.e.
    z = sum_j (cos, sin)(pi b_j / 2) phi(k_j)."""
    inputs = make_inputs(batch=(2,), T=9, d=4, e=3, seed=4, proportions=True)
    arrays = convert(inputs, eager_xp, "float64")
    _, state = sympow.attention(
        arrays["q"], arrays["k"], arrays["v"], kernel=kernel, power=power,
        proportions=arrays["proportions"], form=form, chunk_size=4, return_state=True,
    )  # fmt: skip
    assert tuple(state.S.shape) == (2, 2 * D, 3)
    assert tuple(state.z.shape) == (2, 2 * D)
    _, plain = sympow.attention(
        arrays["q"], arrays["k"], arrays["v"], kernel=kernel, power=power, form=form, return_state=True
    )
    assert tuple(plain.S.shape) == (2, D, 3)
    S, z = (to_numpy(x) for x in state.unscaled())
    b = inputs["proportions"][1]
    halves = np.stack([np.cos(np.pi / 2 * b), np.sin(np.pi / 2 * b)])  # [2, batch, T]
    # z sums non-negative terms (w_h(b) = cos, sin(pi b / 2) >= 0 for b in [0, 1], and the features
    # checked here are >= 0): no cancellation, so each entry holds to a few ulps (rtol 1e-12); S has
    # signed v and is held to the table, relative to max |S|.
    if kernel == "taylor":
        # the degree-0 feature is phi_0 = 1: that entry of each half is sum_j w_h(b_j)
        for h in range(2):
            np.testing.assert_allclose(z[:, h * D], halves[h].sum(-1), rtol=1e-12)
    else:
        # relu: phi(k) = sigma^(1/2) relu(k) (math.md 1, sigma = d^-1/2 = 1/2), so with no gate and no
        # rotary the halves are z_h = sum_j w_h(b_j) phi(k_j) and S_h = sum_j w_h(b_j) phi(k_j) v_j^T,
        # in the coordinate order of k: the whole of S and z, value by value.
        phi = 4**-0.25 * np.maximum(inputs["k"], 0.0)  # [batch, T, d]
        for h in range(2):
            rows = slice(h * D, (h + 1) * D)
            np.testing.assert_allclose(z[:, rows], np.einsum("bt,btf->bf", halves[h], phi), rtol=1e-12)
            S_h = np.einsum("bt,btf,bte->bfe", halves[h], phi, inputs["v"])
            assert_close(S[:, rows], S_h, dtype_name="float64", normalize=False, what=f"S half {h}")


def test_state_without_proportions_is_refused_with_them(xp):
    inputs = make_inputs(T=6, d=4, e=2, seed=1, proportions=True)
    arrays = convert(inputs, xp, "float64")
    _, state = sympow.attention(arrays["q"], arrays["k"], arrays["v"], kernel="relu", return_state=True)
    produced_elsewhere = r"initial_state was produced by kernel='relu' but .* with proportions"
    with pytest.raises(ValueError, match=produced_elsewhere):
        sympow.attention(
            arrays["q"], arrays["k"], arrays["v"], kernel="relu", proportions=arrays["proportions"],
            initial_state=state,
        )  # fmt: skip
    bare = sympow.State(*state)  # no record: the shapes still tell
    with pytest.raises(ValueError, match=r"initial_state\.S"):
        sympow.attention(
            arrays["q"], arrays["k"], arrays["v"], kernel="relu", proportions=arrays["proportions"],
            initial_state=bare,
        )  # fmt: skip


# ------------------------------------------------------------------------------------------------------
# Identities written from the definitions, not through the brute force


def causal(T):
    return np.tril(np.ones((T, T)))


def normalised(A, v, eps=0.0):
    """A [.., T, T] (masked kernel times weight) -> A v / (A 1 + eps), 0 where A 1 + eps = 0."""
    numerator, denominator = A @ v, A.sum(-1, keepdims=True) + eps
    out = np.zeros_like(numerator)
    return np.divide(numerator, denominator, out=out, where=np.broadcast_to(denominator != 0, out.shape))


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_cosformer_is_the_proportions_i_over_M(eager_xp, form, dtype):
    """a_i = i / M, b_j = j / M give cosFormer's re-weighting cos(pi/2 (i - j) / M) (relu features)."""
    T, M = 30, 40
    inputs = make_inputs(batch=(2,), T=T, d=5, e=3, seed=7, dtype=dtype)
    position = np.arange(T, dtype=np.float64) / M
    proportions = (position, position)
    x = {key: np.asarray(value, dtype=np.float64) for key, value in inputs.items()}
    q, k = np.maximum(x["q"], 0) * 5**-0.5, np.maximum(x["k"], 0)
    i, j = np.arange(T)[:, None], np.arange(T)[None, :]
    A = (q @ np.swapaxes(k, -1, -2)) * np.cos(np.pi / 2 * (i - j) / M) * causal(T)
    arrays = convert({**inputs, "proportions": proportions}, eager_xp, dtype)
    for normalize, y_ref in ((True, normalised(A, x["v"])), (False, A @ x["v"])):
        y = sympow.attention(
            arrays["q"], arrays["k"], arrays["v"], kernel="relu", proportions=arrays["proportions"],
            normalize=normalize, form=form, chunk_size=7,
        )  # fmt: skip
        assert_close(y, y_ref, x["v"], dtype_name=dtype, normalize=normalize, what=f"{normalize=}")


@pytest.mark.parametrize(("kernel", "power"), [("relu", 1), ("taylor", 2), ("sympow", 4)])
def test_constant_proportions_are_no_weight(eager_xp, kernel, power):
    """a_i = b_j = c gives the unweighted result; a = c1, b = c2 scale N and Z by cos(pi/2 (c1 - c2)),
    so the normalised result is again unweighted."""
    inputs = make_inputs(T=17, d=4, e=2, seed=power, gate=True, rotary=True)
    arrays = convert(inputs, eager_xp, "float64")
    common = dict(
        kernel=kernel, power=power, log_gate=arrays["log_gate"], rotary=arrays["rotary"], chunk_size=5
    )

    def constant(c):
        return convert({"c": np.full(17, c)}, eager_xp, "float64")["c"]

    for form in FORMS:
        plain = to_numpy(sympow.attention(arrays["q"], arrays["k"], arrays["v"], form=form, **common))
        unweighted = to_numpy(
            sympow.attention(arrays["q"], arrays["k"], arrays["v"], form=form, normalize=False, **common)
        )
        for a, b in ((0.0, 0.0), (0.37, 0.37), (1.0, 1.0), (0.2, 0.9), (1.0, 0.0)):
            what = f"{form} a={a} b={b}"
            proportions = (constant(a), constant(b))
            y = sympow.attention(
                arrays["q"], arrays["k"], arrays["v"], proportions=proportions, form=form, **common
            )
            assert_close(y, plain, inputs["v"], dtype_name="float64", normalize=True, what=what)
            raw = sympow.attention(
                arrays["q"], arrays["k"], arrays["v"], proportions=proportions, form=form, normalize=False,
                **common,
            )  # fmt: skip
            factor = math.cos(math.pi / 2 * (a - b))
            assert_close(raw, factor * unweighted, dtype_name="float64", normalize=False, what=what)


@pytest.mark.parametrize("power", [1, 2, 3, 4, 5])
def test_taylor_is_the_truncated_exponential(eager_xp, power):
    """kappa = sum_{n<=p} s^n / n! with s = sigma q.k, as a masked T x T matrix (normalised for even p)."""
    T, d, scale = 23, 3, 0.7
    inputs = make_inputs(batch=(2,), T=T, d=d, e=4, seed=power, gate=True)
    x = inputs
    s = scale * (x["q"] @ np.swapaxes(x["k"], -1, -2))
    kappa = sum(s**n / math.factorial(n) for n in range(power + 1))
    g = np.cumsum(x["log_gate"], axis=-1)
    # exp(sum_{l=j+1..i} g_l) for j <= i; T is short, so the difference of prefix sums is exact enough.
    weight = np.exp(np.tril(g[..., :, None] - g[..., None, :])) * causal(T)
    A = kappa * weight
    normalize = power % 2 == 0
    y_ref = normalised(A, x["v"]) if normalize else A @ x["v"]
    arrays = convert(inputs, eager_xp, "float64")
    for form in FORMS:
        y = sympow.attention(
            arrays["q"], arrays["k"], arrays["v"], kernel="taylor", power=power, scale=scale,
            log_gate=arrays["log_gate"], normalize=normalize, form=form, chunk_size=6,
        )  # fmt: skip
        assert_close(y, y_ref, x["v"], dtype_name="float64", normalize=normalize, what=form)


def test_taylor_brute_force_kernel_is_the_series():
    """The double loop's taylor kernel is the series itself (its oracle role rests on this)."""
    rng = np.random.default_rng(0)
    q, k, v = rng.standard_normal((1, 3)), rng.standard_normal((1, 3)), np.ones((1, 1))
    s = 3**-0.5 * float(q[0] @ k[0])
    for p in range(5):
        y = brute_force(q, k, v, kernel="taylor", power=p, normalize=False)
        assert y[0, 0] == pytest.approx(sum(s**n / math.factorial(n) for n in range(p + 1)), rel=1e-14)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_relu_all_zero_features_give_zero(eager_xp, form, dtype):
    """Queries or keys with no positive entry give phi = 0, Z = 0 and y = 0 (never NaN), with eps = 0,
    gates, rotary-free inputs and proportions; rows with a positive score are unaffected."""
    inputs = make_inputs(batch=(2,), T=12, d=4, e=3, seed=5, gate=True, proportions=True, dtype=dtype)
    negative_q = {**inputs, "q": -np.abs(inputs["q"])}
    negative_k = {**inputs, "k": -np.abs(inputs["k"])}
    for changed in (negative_q, negative_k):
        arrays = convert(changed, eager_xp, dtype)
        for proportions in (None, arrays["proportions"]):
            for normalize in (True, False):
                y, state = sympow.attention(
                    arrays["q"], arrays["k"], arrays["v"], kernel="relu", log_gate=arrays["log_gate"],
                    proportions=proportions, normalize=normalize, form=form, chunk_size=5,
                    return_state=True,
                )  # fmt: skip
                y = to_numpy(y)
                assert np.isfinite(y).all() and not np.any(y), f"{normalize=}: {y}"
                assert np.isfinite(to_numpy(state.S)).all() and np.isfinite(to_numpy(state.z)).all()
    # Some rows dead, others alive: a query with all entries <= 0 gives 0, the rest match the loop.
    mixed = {
        key: (np.array(value) if isinstance(value, np.ndarray) else value) for key, value in inputs.items()
    }
    mixed["q"][:, ::3] = -np.abs(mixed["q"][:, ::3])
    arrays = convert(mixed, eager_xp, dtype)
    y = sympow.attention(
        arrays["q"], arrays["k"], arrays["v"], kernel="relu", proportions=arrays["proportions"],
        log_gate=arrays["log_gate"], form=form, chunk_size=5,
    )  # fmt: skip
    y_ref = reference(mixed, kernel="relu")
    assert not np.any(y_ref[:, ::3])
    assert_close(y, y_ref, mixed["v"], dtype_name=dtype, normalize=True, what=form)


# ------------------------------------------------------------------------------------------------------
# Bad input


@pytest.fixture
def family_arrays(xp):
    return convert(make_inputs(batch=(2,), T=6, d=4, e=3, seed=0, proportions=True), xp, "float64")


def bad_proportions(xp, arrays):
    a, b = arrays["proportions"]
    values = make_inputs(batch=(2,), T=6, d=4, e=3, seed=0, proportions=True)["proportions"]

    def arr(x):
        return convert({"x": np.asarray(x, dtype=np.float64)}, xp, "float64")["x"]

    above = values[0].copy()
    above[1, 2] = 1.5
    below = values[1].copy()
    below[0, 0] = -1e-3
    nan = values[0].copy()
    nan[0, 3] = np.nan
    return {
        "a-above-1": ((arr(above), b), ValueError, r"proportions\[0\] \(a\).*\[0, 1\]"),
        "b-below-0": ((a, arr(below)), ValueError, r"proportions\[1\] \(b\).*\[0, 1\]"),
        "a-nan": ((arr(nan), b), ValueError, r"proportions\[0\] \(a\)"),
        "a-wrong-T": ((arr(values[0][:, :5]), b), ValueError, r"proportions\[0\] \(a\).*T=6"),
        "b-token-axis-missing": ((a, arr(values[1][:, 0])), ValueError, r"proportions\[1\] \(b\)"),
        "b-batch": ((a, arr(np.zeros((3, 6)))), ValueError, r"proportions\[1\] \(b\)"),
        "not-a-pair": ((a, b, a), TypeError, "proportions must be a pair"),
        "one-array": (a, TypeError, "proportions must be a pair"),
        "b-not-array": ((a, [0.5] * 6), TypeError, r"proportions\[1\] \(b\)"),
    }


CASES = [
    "a-above-1", "b-below-0", "a-nan", "a-wrong-T", "b-token-axis-missing", "b-batch", "not-a-pair",
    "one-array", "b-not-array",
]  # fmt: skip


@pytest.mark.parametrize("which", CASES)
def test_bad_proportions_are_named(xp, family_arrays, which):
    proportions, error, pattern = bad_proportions(xp, family_arrays)[which]
    with pytest.raises(error, match=pattern):
        sympow.attention(
            family_arrays["q"], family_arrays["k"], family_arrays["v"], kernel="relu",
            proportions=proportions,
        )  # fmt: skip


@pytest.mark.parametrize("power", [1, 3, 5])
def test_odd_taylor_refuses_normalize(xp, family_arrays, power):
    with pytest.raises(ValueError, match=rf"normalize.*power={power}"):
        sympow.attention(
            family_arrays["q"], family_arrays["k"], family_arrays["v"], kernel="taylor", power=power
        )
    y = sympow.attention(
        family_arrays["q"], family_arrays["k"], family_arrays["v"], kernel="taylor", power=power,
        normalize=False,
    )  # fmt: skip
    assert np.isfinite(to_numpy(y)).all()


@pytest.mark.parametrize("power", [0, -2, 2.0, True])
def test_taylor_power_must_be_a_positive_int(family_arrays, power):
    with pytest.raises(ERRORS, match="power"):
        sympow.attention(
            family_arrays["q"], family_arrays["k"], family_arrays["v"], kernel="taylor", power=power
        )
