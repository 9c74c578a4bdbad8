"""Extremes: strong gates, huge accumulated angles, scores far past float32's range, zero rows."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import strategies as st

import sympow
from sympow.testing import assert_close, convert, make_inputs, to_numpy
from sympow.testing.strategies import FORMS, attention_cases, given_for
from sympow.testing.tolerances import angle_error
from tests.brute_force import reference
from tests.without_x64 import run_without_x64

pytestmark = pytest.mark.usefixtures("spec_backend")

ALL_FORMS = (*FORMS, "auto")


def test_log_gates_down_to_minus_50(xp):
    """Gates of e^-50 a token: the weights of a row span far more than float32's range. The parallel form
    (terms in log space, each row's largest factored out) holds the table; a state path holds its sums
    relative to the norms and is held to the contract's condition term (math.md 8)."""

    @given_for(xp, case=attention_cases(max_T=48, gate=True, gate_min=-50.0), form=st.sampled_from(FORMS))
    def check(case, form):
        y = case.call(sympow.attention, xp, form=form)
        y_ref = reference(case.inputs, **case.options)
        case.assert_matches(y, y_ref, state_path=form != "parallel", what=f"{form} {case}")

    check()


def test_a_relu_row_whose_heavy_keys_miss_its_support():
    """relu, gates of -60: query 2's support misses key 2's and key 1's, so its only terms come from key
    0 at e^-100 of the norms' bound, below float32's range relative to it. The parallel form took the
    bound as the row's scale and returned 0 (0 / 0) instead of v_0; with terms in log space it is exact
    to rounding."""
    q = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    k = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    v = np.array([[1.0, -2.0], [3.0, 4.0], [5.0, 6.0]])
    log_gate = np.array([0.0, -60.0, -60.0])
    y = sympow.attention(
        *(x.astype(np.float32) for x in (q, k, v)), log_gate=log_gate.astype(np.float32), kernel="relu",
        form="parallel",
    )  # fmt: skip
    expected = np.array([v[0], v[1], v[0]])
    assert_close(y, expected, v, dtype_name="float32", normalize=True, what="relu, support misses")


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize(("gate", "eps"), [(-50.0, 0.0), (-1e4, 1e-3)])
def test_log_gates_far_below_zero_everywhere(xp, form, gate, eps):
    """Every key is forgotten at once: y_i = s_ii^2 v_i / (s_ii^2 + eps). At -1e4 the gates' exp underflows
    even in float64, and eps exp(-m) must not overflow on the way (warnings are errors here)."""
    inputs = make_inputs(batch=(2,), T=40, d=4, e=3, seed=4)
    inputs["log_gate"] = np.full((2, 40), gate)
    for dtype in ("float64", "float32"):
        arrays = convert(inputs, xp, dtype)
        y = sympow.attention(
            arrays["q"],
            arrays["k"],
            arrays["v"],
            log_gate=arrays["log_gate"],
            eps=eps,
            form=form,
            chunk_size=7,
        )
        assert_close(
            y,
            reference(inputs, eps=eps),
            inputs["v"],
            dtype_name=dtype,
            normalize=True,
            what=f"{form} {dtype}",
        )


def huge_angle_inputs(T, total, seed, d=4, e=2, batch=()):
    """float32 inputs whose rotary increments sum to about ``total`` radians (|mu_T| ~ total)."""
    inputs = make_inputs(batch=batch, T=T, d=d, e=e, seed=seed, rotary=True, gate=True, dtype="float32")
    rng = np.random.default_rng(seed)
    step = total / T
    increments = step * (1.0 + 0.1 * rng.standard_normal((*batch, T, d // 2)))
    inputs["rotary"] = increments.astype(np.float32)
    return inputs


@pytest.mark.parametrize("form", ALL_FORMS)
def test_rotary_angles_of_1e6_small_T(xp, form):
    """Increments summing to |mu| ~ 1e6 at T = 48: float32 against the brute force on the same
    (float32) increments, upcast."""
    inputs = huge_angle_inputs(48, 1e6, seed=7, batch=(2,))
    assert abs(float(np.sum(inputs["rotary"][0, :, 0], dtype=np.float64))) > 9e5
    arrays = convert(inputs, xp, "float32")
    y = sympow.attention(
        arrays["q"],
        arrays["k"],
        arrays["v"],
        log_gate=arrays["log_gate"],
        rotary=arrays["rotary"],
        form=form,
        chunk_size=5,
    )
    assert_close(y, reference(inputs), inputs["v"], dtype_name="float32", normalize=True, what=form)


@pytest.fixture(scope="module")
def long_rotary_case():
    """T = 4096 with |mu_T| ~ 1e6, and its float64 chunked reference (the increments upcast)."""
    inputs = huge_angle_inputs(4096, 1e6, seed=8)
    upcast = convert(inputs, np, "float64")
    y_ref = sympow.attention(
        upcast["q"],
        upcast["k"],
        upcast["v"],
        log_gate=upcast["log_gate"],
        rotary=upcast["rotary"],
        form="chunked",
        chunk_size=64,
    )
    return inputs, y_ref


def run_long_rotary(xp, form, long_rotary_case):
    inputs, y_ref = long_rotary_case
    assert abs(float(np.sum(inputs["rotary"][:, 0], dtype=np.float64))) > 9e5
    arrays = convert(inputs, xp, "float32")
    y = sympow.attention(
        arrays["q"], arrays["k"], arrays["v"], log_gate=arrays["log_gate"],
        rotary=arrays["rotary"], form=form, chunk_size=64,
    )  # fmt: skip
    assert_close(y, y_ref, inputs["v"], dtype_name="float32", normalize=True, what=form)


@pytest.mark.parametrize("form", ["parallel", "chunked", "auto"])
def test_rotary_angles_of_1e6_at_T_4096(xp, form, long_rotary_case):
    run_long_rotary(xp, form, long_rotary_case)


def test_rotary_angles_of_1e6_at_T_4096_recurrent(long_rotary_case):
    """The recurrent form at T = 4096 on NumPy only: a Python loop of 4096 steps is slow in eager
    JAX and array-api-strict (every namespace runs it at T = 48 above)."""
    run_long_rotary(np, "recurrent", long_rotary_case)


# The compensated angle sum (rotary.py) serves namespaces without float64 (JAX's default). Its result, a
# float32 angle in [-pi, pi), is exact up to its own rounding, half an ulp at pi (1.2e-7), plus the
# rounding of the pair's low part: 2.4e-7 radians bounds both.
ANGLE_BOUND = 2.4e-7


@pytest.mark.parametrize("per_token", [1.0, 3e4, 1.6e5, 1e6, 1e7])
def test_compensated_angles_without_float64(per_token):
    """Increments of up to 1e7 radians a token (sums up to 4e8) against the float64 sum of the same
    float32 numbers; before the two-part Cody-Waite split the error was 0.03 at 3e4 radians a token
    and 0.15 at 1.6e5. NumPy runs the float32 path (float64=False) in this process."""
    from sympow.spec.rotary import accumulate_angles

    rng = np.random.default_rng(int(per_token))
    increments = (per_token * rng.standard_normal((3, 200, 4))).astype(np.float32)
    mu0 = rng.uniform(-math.pi, math.pi, (3, 4)).astype(np.float32)
    mu, end = accumulate_angles(increments, mu0, np, float64=False)
    assert mu.dtype == np.float32 and end.dtype == np.float32
    exact = np.cumsum(np.concatenate([mu0[:, None], increments], axis=1), axis=1, dtype=np.float64)[:, 1:]
    assert angle_error(mu.astype(np.float64), exact) <= ANGLE_BOUND
    assert angle_error(end.astype(np.float64), exact[:, -1]) <= ANGLE_BOUND
    assert np.all(np.abs(end) <= math.pi)


JAX_ROTARY_WITHOUT_X64 = """
import jax, numpy as np, sympow
from sympow.testing import assert_close, make_inputs
assert not jax.config.jax_enable_x64
for per_token in (2e3, 1.6e5, 1e6):
    x = make_inputs(batch=(2,), T=64, d=8, e=3, seed=3, rotary=True, gate=True, dtype="float32")
    x["rotary"] = (per_token * np.random.default_rng(4).standard_normal((2, 64, 4))).astype(np.float32)
    wide = {k: x[k].astype(np.float64) for k in x}
    y_ref = sympow.attention(wide["q"], wide["k"], wide["v"], log_gate=wide["log_gate"],
                             rotary=wide["rotary"], backend="reference")
    arrays = {k: jax.numpy.asarray(x[k]) for k in x}
    for backend in ("reference", "jax"):
        for form in ("parallel", "chunked"):
            y = sympow.attention(arrays["q"], arrays["k"], arrays["v"], log_gate=arrays["log_gate"],
                                 rotary=arrays["rotary"], form=form, chunk_size=16, backend=backend)
            assert_close(y, y_ref, x["v"], dtype_name="float32", normalize=True,
                         what=f"{backend} {form} {per_token} rad/token")
print("ok")
"""


def test_rotary_phase_on_jax_without_x64():
    """JAX's default, without float64: large rotary angles (up to 1e6 radians a token, sums to 6e7)
    within the float32 tolerance of the float64 reference, on the reference and the jax backend (issue
    12, item 7: the reference erred 4.7e-3 at angles of 1e5 and 0.46 at 1e7). Its own process: the test
    session enables x64 for every other JAX test."""
    run_without_x64(JAX_ROTARY_WITHOUT_X64)


def large_score_inputs(seed, T, d, e, batch, max_score, dtype, *, positive=False):
    """Inputs scaled so that max |s_ij| = max_score (default sigma). With ``positive`` the q and k
    entries are positive, so that no feature dot product cancels: range (overflow of s^p) alone;
    otherwise signed, range and cancellation together."""
    inputs = make_inputs(batch=batch, T=T, d=d, e=e, seed=seed)
    q, k = inputs["q"], inputs["k"]
    if positive:
        q, k = np.abs(q), np.abs(k)
    scores = np.abs(np.einsum("...id,...jd->...ij", q, k)) * d**-0.5
    factor = math.sqrt(max_score / scores.max())
    inputs["q"], inputs["k"] = q * factor, k * factor
    return {key: value.astype(dtype) for key, value in inputs.items()}


def test_scores_past_float32_range(xp):
    """|s| up to 1e5 and p up to 8 (terms near 1e40): normalised float32 output is finite and
    within tolerance of the float64 brute force."""

    @given_for(
        xp,
        seed=st.integers(0, 2**32 - 1),
        T=st.integers(1, 48),
        d=st.integers(2, 4),
        e=st.integers(1, 4),
        power=st.sampled_from([2, 4, 6, 8]),
        max_score=st.sampled_from([1e2, 1e4, 1e5]),
        form=st.sampled_from(ALL_FORMS),
        chunk=st.integers(1, 51),
        positive=st.booleans(),
    )
    def check(seed, T, d, e, power, max_score, form, chunk, positive):
        inputs = large_score_inputs(seed, T, d, e, (2,), max_score, "float32", positive=positive)
        arrays = convert(inputs, xp, "float32")
        y = sympow.attention(arrays["q"], arrays["k"], arrays["v"], power=power, form=form, chunk_size=chunk)
        assert np.isfinite(to_numpy(y)).all()
        y_ref = reference(inputs, power=power)
        assert_close(
            y,
            y_ref,
            inputs["v"],
            dtype_name="float32",
            normalize=True,
            what=f"{form} p={power} max|s|={max_score}",
        )

    check()


@pytest.mark.parametrize("form", FORMS)
def test_scores_past_float32_range_state(xp, form):
    """The float32 state of such scores is finite (the log scale carries the magnitude) and
    resumes correctly."""
    inputs = large_score_inputs(1, 30, 3, 2, (), 1e5, "float32")
    arrays = convert(inputs, xp, "float32")
    q, k, v = arrays["q"], arrays["k"], arrays["v"]
    y1, state = sympow.attention(
        q[:12, :], k[:12, :], v[:12, :], power=8, form=form, return_state=True, chunk_size=5
    )
    for name in ("S", "z", "log_scale"):
        assert np.isfinite(to_numpy(getattr(state, name))).all(), name
    y2 = sympow.attention(
        q[12:, :], k[12:, :], v[12:, :], power=8, form=form, initial_state=state, chunk_size=5
    )
    y = np.concatenate([to_numpy(y1), to_numpy(y2)], axis=-2)
    assert_close(y, reference(inputs, power=8), inputs["v"], dtype_name="float32", normalize=True, what=form)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("kernel", ["sympow", "relu"])
def test_zero_denominator_gives_zero(xp, form, kernel):
    """Where Z_i + eps = 0 (a zero query; for relu also an all-negative one), y_i = 0, not NaN."""
    inputs = make_inputs(T=6, d=4, e=2, seed=9)
    inputs["q"][2] = 0.0
    inputs["q"][4] = -np.abs(inputs["q"][4]) if kernel == "relu" else 0.0
    arrays = convert(inputs, xp, "float64")
    y = to_numpy(
        sympow.attention(arrays["q"], arrays["k"], arrays["v"], kernel=kernel, form=form, chunk_size=4)
    )
    assert np.all(y[2] == 0.0) and np.all(y[4] == 0.0)
    assert_close(
        y,
        reference(inputs, kernel=kernel),
        inputs["v"],
        dtype_name="float64",
        normalize=True,
        what=form,
    )


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("kernel", ["sympow", "taylor"])
def test_zero_query_and_key_have_finite_gradients(form, kernel):
    """|x| is not differentiable at x = 0, but phi is: autograd through the reference (torch) stays finite
    where a query or a key is exactly zero, with gates."""
    torch = pytest.importorskip("torch")
    inputs = make_inputs(batch=(2,), T=9, d=4, e=3, seed=12, gate=True)
    inputs["k"][0, 3] = 0.0
    inputs["q"][1, 2] = 0.0
    arrays = {name: torch.tensor(inputs[name], requires_grad=True) for name in ("q", "k", "v", "log_gate")}
    y = sympow.attention(
        arrays["q"], arrays["k"], arrays["v"], log_gate=arrays["log_gate"], kernel=kernel, form=form,
        chunk_size=4, backend="reference",
    )  # fmt: skip
    gradients = torch.autograd.grad((y**2).sum(), list(arrays.values()))
    assert all(bool(torch.isfinite(g).all()) for g in gradients)


@pytest.mark.parametrize("form", FORMS)
def test_zero_values_and_tiny_inputs(xp, form):
    """Subnormal-sized queries and keys still give the normalised average (in float64)."""
    inputs = make_inputs(T=10, d=4, e=2, seed=10)
    inputs["q"] *= 1e-150
    inputs["k"] *= 1e-150
    arrays = convert(inputs, xp, "float64")
    y = sympow.attention(arrays["q"], arrays["k"], arrays["v"], form=form, chunk_size=3)
    unscaled = {**inputs, "q": inputs["q"] * 1e150, "k": inputs["k"] * 1e150}
    assert_close(y, reference(unscaled), inputs["v"], dtype_name="float64", normalize=True, what=form)


def nearly_orthogonal_inputs(seed: int, T: int, d: int, e: int, offset: float) -> dict[str, np.ndarray]:
    """float32 inputs (T < d) whose last query is orthogonal to every key, plus noise of size ``offset``:
    its scores, and so its denominator, are tiny against |q| |k|, and phi(q).S cancels almost entirely."""
    rng = np.random.default_rng(seed)
    q, k, v = rng.standard_normal((T, d)), rng.standard_normal((T, d)), rng.standard_normal((T, e))
    last = q[-1] - k.T @ np.linalg.lstsq(k.T, q[-1], rcond=None)[0]
    q[-1] = last / np.linalg.norm(last) + offset * rng.standard_normal(d)
    return {name: x.astype(np.float32) for name, x in (("q", q), ("k", k), ("v", v))}


@pytest.mark.parametrize("form", FORMS)
def test_query_nearly_orthogonal_to_every_key(xp, form):
    """phi(q).S sums terms of size |q|^2 |k|^2 whose total is (q.k)^2: for a query nearly orthogonal to
    every key a float32 state loses it (measured here: 2.7e-2 of max |v| at p = 2, d = 8, noise 1e-3; up to
    1.2 in a random search). With ``state_dtype="float64"`` every form stays within the float32
    tolerance, as the direct score path of the parallel form does (the float32 state path is held to the
    condition term instead: tests/spec/test_precision.py).
    """
    for seed, offset in enumerate([1e-1, 1e-2, 1e-3]):
        inputs = nearly_orthogonal_inputs(seed, T=5, d=8, e=3, offset=offset)
        arrays = convert(inputs, xp, "float32")
        y = sympow.attention(
            arrays["q"], arrays["k"], arrays["v"], form=form, chunk_size=1, state_dtype="float64"
        )
        assert_close(
            y, reference(inputs), inputs["v"], dtype_name="float32", normalize=True, what=f"{form} {offset}"
        )


@pytest.mark.parametrize(
    ("norms", "what"),
    [
        ((1e-2, 1e-2, 1.0), "chunk scales 9 nats apart: one reference"),
        ((1e-25, 1e-25, 1.0), "115 nats apart: a running scale (one reference would underflow chunk 0)"),
        ((0.0, 1e-2, 1.0), "an empty state before the first key must not pose as one of scale R"),
    ],
)
@pytest.mark.parametrize("resumed", [False, True])
def test_chunk_scales_near_and_far_apart(xp, norms, what, resumed):
    """Without gates the chunked form holds the state against one reference R when every chunk's scale
    lies within 20 nats of the largest, and against a running scale otherwise. Keys of chunks 0 and 1
    (8 tokens each) are scaled by ``norms[:2]``, the rest by ``norms[2]``: the queries of chunk 1 then
    depend on chunk 0's tiny keys, which float32 loses if they are held against R (exp(-115) underflows),
    and an empty state (zero keys) held as one of scale R would swamp the first query of chunk 1, whose
    only key (norm 1e-25) is far below its chunk's scale. float32, one call and resumed, against the
    double loop."""
    inputs = make_inputs(batch=(2,), T=24, d=4, e=3, seed=8, dtype="float32")
    for chunk, norm in enumerate(norms):
        inputs["k"][..., 8 * chunk : 8 * chunk + 8, :] *= np.float32(norm)
    if norms[0] == 0.0:
        inputs["k"][..., 8, :] *= np.float32(1e-23)
    arrays = convert(inputs, xp, "float32")
    options = dict(form="chunked", chunk_size=8)
    if resumed:
        head = {key: value[..., :5, :] for key, value in arrays.items()}
        tail = {key: value[..., 5:, :] for key, value in arrays.items()}
        y1, state = sympow.attention(head["q"], head["k"], head["v"], return_state=True, **options)
        y2 = sympow.attention(tail["q"], tail["k"], tail["v"], initial_state=state, **options)
        y = np.concatenate([to_numpy(y1), to_numpy(y2)], axis=-2)
    else:
        y = sympow.attention(arrays["q"], arrays["k"], arrays["v"], **options)
    rounded = {key: value.astype(np.float64) for key, value in inputs.items()}
    assert_close(y, reference(rounded), rounded["v"], dtype_name="float32", normalize=True, what=what)


@pytest.mark.parametrize("form", FORMS)
def test_scores_beyond_the_float32_range(xp, form):
    """float32 q and k of norm about 1e20 (scores about 1e40, past float32's 3e38): every exact output is
    finite (1, with v = 1), and so is every form's, since scores are taken from unit directions and log
    norms and never formed (issue 12: every form returned NaN here)."""
    rng = np.random.default_rng(0)
    q, k = (rng.standard_normal((32, 8)) * (1e20 / 3) for _ in range(2))
    arrays = convert({"q": q, "k": k, "v": np.ones((32, 1))}, xp, "float32")
    y = sympow.attention(arrays["q"], arrays["k"], arrays["v"], form=form, chunk_size=8)
    np.testing.assert_allclose(to_numpy(y), 1.0, rtol=1e-6)
