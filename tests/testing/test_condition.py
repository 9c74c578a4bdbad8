"""The state-path condition number (math.md section 9), the per-row tolerance and its checker.

``condition_numbers`` is compared with a brute-force double loop over (i, j) written here from the
definitions; the nearly orthogonal strategy is checked to reach the ill-conditioned range it promises.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sympow
from sympow.testing import (
    GAMMA,
    assert_close_rows,
    condition_numbers,
    relative_error,
    relative_errors_by_row,
    row_tolerances,
    state_path_gamma,
    tolerance,
    unit_roundoff,
)
from sympow.testing.strategies import AttentionCase, attention_cases, nearly_orthogonal_cases

U32 = 2.0**-24

# ----------------------------------------------------------------------------------------------------------
# Brute force, from the definitions


def rotate_token(x, mu, layout):
    """R(mu) x for one token, pair by pair."""
    out = np.array(x, dtype=np.float64)
    half = len(x) // 2
    for m in range(half):
        a, b = (m, m + half) if layout == "half" else (2 * m, 2 * m + 1)
        c, s = math.cos(mu[m]), math.sin(mu[m])
        out[a] = x[a] * c - x[b] * s
        out[b] = x[a] * s + x[b] * c
    return out


def sym_features(y, p):
    """phi_p(y)_a = sqrt(p! / prod a_m!) prod_r y_{i_r} over sorted multisets, in lexicographic order."""
    values = []
    for multiset in itertools.combinations_with_replacement(range(len(y)), p):
        multiplicities = [multiset.count(i) for i in set(multiset)]
        coefficient = math.sqrt(math.factorial(p) / math.prod(math.factorial(a) for a in multiplicities))
        values.append(coefficient * math.prod(y[i] for i in multiset))
    return np.array(values)


def features(y, kernel, power):
    """phi of the kernel at y = sigma^{1/2} x (x rotated, and rectified for relu)."""
    if kernel in ("relu", "identity"):
        return np.array(y)
    if kernel == "sympow":
        return sym_features(y, power)
    return np.concatenate([sym_features(y, n) / math.sqrt(math.factorial(n)) for n in range(power + 1)])


def kappa(s, kernel, power):
    if kernel == "sympow":
        return s**power
    if kernel == "taylor":
        return sum(s**n / math.factorial(n) for n in range(power + 1))
    return s  # identity, and relu on rectified inputs


def kappa_bar(x, kernel, power):
    if kernel == "sympow":
        return x**power
    if kernel == "taylor":
        return sum(x**n / math.factorial(n) for n in range(power + 1))
    return x


def brute_condition(
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
):
    """c [*batch, T] by a double loop per batch entry; the state's term from sum_f |phi_f(q~_i)| |z_f|."""
    q, k, v = (np.asarray(x, dtype=np.float64) for x in (q, k, v))
    T, d = q.shape[-2:]
    e = v.shape[-1]
    sigma = d**-0.5 if scale is None else scale
    g = np.zeros(q.shape[:-1]) if log_gate is None else np.asarray(log_gate, dtype=np.float64)
    a, b = (np.zeros(T), np.zeros(T)) if proportions is None else proportions
    st_S = st_z = st_mu = None
    st_scale = np.array(-np.inf)
    if initial_state is not None:
        st_S, st_z, st_scale = (np.asarray(x, dtype=np.float64) for x in (
            initial_state.S, initial_state.z, initial_state.log_scale))  # fmt: skip
        st_mu = None if initial_state.mu is None else np.asarray(initial_state.mu, dtype=np.float64)
    use_rotary = rotary is not None or st_mu is not None
    w = np.zeros((*q.shape[:-1], d // 2)) if rotary is None else np.asarray(rotary, dtype=np.float64)
    mu0 = np.zeros(d // 2) if st_mu is None else st_mu
    zeros_S = np.zeros((1, e)) if st_S is None else st_S
    zeros_z = np.zeros(1) if st_z is None else st_z
    batch = np.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2], g.shape[:-1], np.shape(a)[:-1],
                                np.shape(b)[:-1], w.shape[:-2], zeros_S.shape[:-2], zeros_z.shape[:-1],
                                st_scale.shape, mu0.shape[:-1])  # fmt: skip

    def each(x, tail):
        return np.broadcast_to(np.asarray(x, dtype=np.float64), (*batch, *tail))

    q, k, v, w = each(q, (T, d)), each(k, (T, d)), each(v, (T, e)), each(w, (T, d // 2))
    g, a, b = each(g, (T,)), each(a, (T,)), each(b, (T,))
    numerators, peaks, denominators = np.zeros((*batch, T)), [], np.zeros((*batch, T))
    for index in np.ndindex(*batch):
        mu = each(mu0, (d // 2,))[index] + np.cumsum(w[index], axis=0)
        qt, kt = np.array(q[index]), np.array(k[index])
        if use_rotary:
            qt = np.array([rotate_token(qt[t], mu[t], rotary_layout) for t in range(T)])
            kt = np.array([rotate_token(kt[t], mu[t], rotary_layout) for t in range(T)])
        if kernel == "relu":
            qt, kt = np.maximum(qt, 0.0), np.maximum(kt, 0.0)
        for i in range(T):
            num, Z, N = 0.0, 0.0, np.zeros(e)
            for j in range(i + 1):
                weight = math.exp(sum(g[index][j + 1 : i + 1])) * math.cos(
                    math.pi / 2 * (a[index][i] - b[index][j])
                )
                s = sigma * float(qt[i] @ kt[j])
                bar = kappa_bar(sigma * np.linalg.norm(qt[i]) * np.linalg.norm(kt[j]), kernel, power)
                num += weight * bar * (1.0 if normalize else np.max(np.abs(v[index][j])))
                Z += weight * kappa(s, kernel, power)
                N += weight * kappa(s, kernel, power) * v[index][j]
            if initial_state is not None:
                f = features(math.sqrt(sigma) * qt[i], kernel, power)
                D = len(f)
                from_start = math.exp(sum(g[index][: i + 1])) * math.exp(each(st_scale, ())[index])
                halves = (
                    [1.0]
                    if proportions is None
                    else [math.cos(math.pi * a[index][i] / 2), math.sin(math.pi * a[index][i] / 2)]
                )
                S, z = each(st_S, (len(halves) * D, e))[index], each(st_z, (len(halves) * D,))[index]
                for h, qw in enumerate(halves):
                    zh, Sh = z[h * D : (h + 1) * D], S[h * D : (h + 1) * D]
                    if normalize:
                        num += from_start * qw * sum(abs(f[r]) * abs(zh[r]) for r in range(D))
                    else:
                        num += from_start * qw * sum(abs(f[r]) * np.max(np.abs(Sh[r])) for r in range(D))
                    Z += from_start * qw * float(f @ zh)
                    N += from_start * qw * (f @ Sh)
            numerators[(*index, i)] = num
            denominators[(*index, i)] = abs(Z + eps)
            peaks.append(np.max(np.abs(N), initial=0.0))
    if not normalize:
        denominators[...] = max(peaks, default=0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        c = numerators / denominators
    return np.where(numerators == 0, 0.0, np.where(denominators == 0, np.inf, c))


def case_kwargs(case: AttentionCase, inputs=None) -> dict:
    inputs = case.inputs if inputs is None else inputs
    return {**case.options, **{name: inputs.get(name) for name in ("log_gate", "proportions", "rotary")}}


def split_inputs(inputs: dict, t: int) -> tuple[dict, dict]:
    """The inputs of tokens [0, t) and [t, T) (the token axis is the last of log_gate and proportions,
    the second last of the others)."""

    def cut(sl):
        out = {}
        for name, x in inputs.items():
            if x is None:
                out[name] = None
            elif name == "proportions":
                out[name] = tuple(y[..., sl] for y in x)
            elif name == "log_gate":
                out[name] = x[..., sl]
            else:
                out[name] = x[..., sl, :]
        return out

    return cut(slice(0, t)), cut(slice(t, None))


def assert_same(c, expected):
    assert c.shape == expected.shape
    np.testing.assert_allclose(c, expected, rtol=1e-8, atol=0.0)


# ----------------------------------------------------------------------------------------------------------
# condition_numbers against the brute force

SMALL = dict(max_T=12, max_d=6, max_e=3, max_p=4, max_features=120, dtypes=("float64",))


@settings(max_examples=max(40, settings.default.max_examples))
@given(case=attention_cases(**SMALL))
def test_matches_brute_force(case):
    c = condition_numbers(case.inputs["q"], case.inputs["k"], case.inputs["v"], **case_kwargs(case))
    assert c.shape == (*case.batch, case.T)
    assert_same(c, brute_condition(case.inputs["q"], case.inputs["k"], case.inputs["v"], **case_kwargs(case)))


@settings(max_examples=max(30, settings.default.max_examples))
@given(case=attention_cases(min_T=2, **SMALL), fraction=st.floats(0.0, 1.0))
def test_matches_brute_force_with_initial_state(case, fraction):
    t = min(case.T - 1, max(1, round(fraction * case.T)))
    prefix, suffix = split_inputs(case.inputs, t)
    _, state = case.call(
        sympow.attention, np, inputs=prefix, return_state=True, backend="reference", form="parallel"
    )
    kwargs = case_kwargs(case, suffix)
    c = condition_numbers(suffix["q"], suffix["k"], suffix["v"], initial_state=state, **kwargs)
    expected = brute_condition(suffix["q"], suffix["k"], suffix["v"], initial_state=state, **kwargs)
    assert_same(c, expected)


def test_call_through_the_case():
    """AttentionCase.call passes chunk_size (and may pass form, backend): accepted and ignored."""
    case = AttentionCase(
        inputs=sympow.testing.make_inputs(T=5, d=4, e=2, seed=1, gate=True), batch=(), T=5, d=4, e=2, seed=1,
        kernel="sympow", power=2, normalize=True, scale=None, eps=0.0, rotary_layout="half", chunk_size=2,
        dtype="float64",
    )  # fmt: skip
    c = case.call(condition_numbers, np, form="chunked", backend="reference")
    assert_same(c, brute_condition(case.inputs["q"], case.inputs["k"], case.inputs["v"], **case_kwargs(case)))


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("layout", ["half", "interleaved"])
def test_broadcast_batch_axes(normalize, layout):
    rng = np.random.default_rng(7)
    T, d, e = 6, 4, 2
    q = rng.standard_normal((2, 1, T, d))
    k = rng.standard_normal((1, 3, T, d))
    v = rng.standard_normal((3, T, e))
    kwargs = dict(
        kernel="taylor", power=2, scale=0.7, log_gate=-rng.random((2, 1, T)),
        proportions=(rng.random(T), rng.random((1, 3, T))), rotary=rng.standard_normal((3, T, d // 2)),
        rotary_layout=layout, normalize=normalize, eps=1e-3 if normalize else 0.0,
    )  # fmt: skip
    c = condition_numbers(q, k, v, **kwargs)
    assert c.shape == (2, 3, T)
    assert_same(c, brute_condition(q, k, v, **kwargs))


def test_state_with_every_option():
    """taylor p = 2 with gates, proportions (D' = 2D), rotary (the state carries mu) and eps."""
    inputs = sympow.testing.make_inputs(
        batch=(2,), T=9, d=4, e=3, seed=3, gate=True, rotary=True, proportions=True
    )
    prefix, suffix = split_inputs(inputs, 5)
    options = dict(kernel="taylor", power=2, rotary_layout="interleaved", eps=0.5)
    arrays = {name: prefix[name] for name in ("log_gate", "proportions", "rotary")}
    _, state = sympow.attention(prefix["q"], prefix["k"], prefix["v"], **options, **arrays, return_state=True,
                                backend="reference")  # fmt: skip
    assert state.z.shape[-1] == 2 * 15 and state.mu is not None
    for normalize in (True, False):
        kwargs = {**options, "normalize": normalize, **{name: suffix[name] for name in arrays}}
        c = condition_numbers(suffix["q"], suffix["k"], suffix["v"], initial_state=state, **kwargs)
        assert_same(c, brute_condition(suffix["q"], suffix["k"], suffix["v"], initial_state=state, **kwargs))


def test_relu_is_conditioned_by_its_norms_and_zero_rows_give_zero():
    """relu's kbar is the Cauchy-Schwarz bound sigma |q+| |k+| >= kappa (the state path's sums are held
    relative to the norms), so c_i >= 1, with equality where every rectified key is parallel to the
    rectified query; a query with no positive entry has numerator 0 and c_i = 0."""
    rng = np.random.default_rng(0)
    q, k, v = rng.standard_normal((8, 5)), rng.standard_normal((8, 5)), rng.standard_normal((8, 2))
    q[3] = -np.abs(q[3])  # every feature of query 3 is zero: numerator 0
    c = condition_numbers(q, k, v, kernel="relu", power=1)
    assert c[3] == 0.0
    others = np.delete(c, 3)
    assert np.all(others >= 1.0 - 1e-14) and np.any(others > 1.5)
    assert_same(c, brute_condition(q, k, v, kernel="relu", power=1))
    parallel = np.abs(rng.standard_normal(5))
    aligned = condition_numbers(np.tile(parallel, (8, 1)), np.outer(rng.uniform(0.5, 2, 8), parallel), v,
                                kernel="relu", power=1)  # fmt: skip
    np.testing.assert_allclose(aligned, 1.0, rtol=1e-14)
    with_eps = condition_numbers(q, k, v, kernel="relu", power=1, eps=1e3)
    assert np.all(with_eps < 1e-1) and with_eps[3] == 0.0
    _, state = sympow.attention(k, k, v, kernel="relu", return_state=True, backend="reference")
    resumed = condition_numbers(q, k, v, kernel="relu", power=1, initial_state=state)
    assert resumed[3] == 0.0
    assert np.all(np.delete(resumed, 3) >= 1.0 - 1e-14)  # the state's terms are >= 0 too


def test_zero_denominator_with_a_positive_numerator_is_infinite():
    q = np.array([[1.0, 0.0], [1.0, 0.0]])
    k = np.array([[0.0, 1.0], [1.0, 1.0]])
    v = np.ones((2, 1))
    c = condition_numbers(q, k, v, power=2)  # row 0: q . k = 0 exactly
    assert c[0] == np.inf and np.isfinite(c[1]) and c[1] >= 1.0


@pytest.mark.parametrize("normalize", [True, False])
def test_no_overflow_at_large_scores_and_high_powers(normalize):
    """c of sympow is invariant under scaling q and k (both sums are homogeneous of degree p)."""
    rng = np.random.default_rng(2)
    q, k, v = (
        rng.standard_normal((2, 24, 8)),
        rng.standard_normal((2, 24, 8)),
        rng.standard_normal((2, 24, 3)),
    )
    power = 16 if normalize else 15
    small = condition_numbers(q, k, v, power=power, normalize=normalize)
    large = condition_numbers(1e5 * q, 1e5 * k, v, power=power, normalize=normalize)
    assert np.all(np.isfinite(large)) and np.all(large > 0)
    np.testing.assert_allclose(large, small, rtol=1e-9)
    gated = condition_numbers(
        1e5 * q, 1e5 * k, v, power=power, normalize=normalize, log_gate=np.full(24, -60.0)
    )
    assert np.all(np.isfinite(gated)) and np.all(gated > 0)


def test_state_scale_far_outside_float64():
    """With zero keys only the state's terms count, and then c does not depend on its log_scale."""
    rng = np.random.default_rng(3)
    q, k, v = rng.standard_normal((5, 4)), rng.standard_normal((5, 4)), rng.standard_normal((5, 2))
    _, state = sympow.attention(k, k, v, power=2, return_state=True, backend="reference")
    for normalize in (True, False):
        kwargs = dict(power=2, normalize=normalize, log_gate=np.full(5, -3.0))
        base = condition_numbers(q, 0 * k, v, initial_state=state, **kwargs)
        assert np.all(base > 0) and np.all(np.isfinite(base))
        for shift in (-2000.0, 2000.0):
            moved = state._replace(log_scale=state.log_scale + shift)
            np.testing.assert_allclose(
                condition_numbers(q, 0 * k, v, initial_state=moved, **kwargs), base, rtol=1e-12
            )


def test_accepts_other_libraries():
    torch = pytest.importorskip("torch")
    inputs = sympow.testing.make_inputs(T=7, d=4, e=2, seed=5, gate=True, rotary=True)
    expected = condition_numbers(
        inputs["q"], inputs["k"], inputs["v"], log_gate=inputs["log_gate"], rotary=inputs["rotary"]
    )
    t = sympow.testing.convert(inputs, torch, "float64")
    got = condition_numbers(t["q"], t["k"], t["v"], log_gate=t["log_gate"], rotary=t["rotary"])
    np.testing.assert_array_equal(got, expected)


def test_bad_arguments():
    q = np.ones((3, 4))
    with pytest.raises(ValueError, match="power"):
        condition_numbers(q, q, q, power=0)
    with pytest.raises(ValueError, match="rotary_layout"):
        condition_numbers(q, q, q, rotary_layout="pairs")
    with pytest.raises(ValueError, match="broadcast"):
        condition_numbers(np.ones((2, 3, 4)), np.ones((3, 3, 4)), q)
    with pytest.raises(ValueError, match="kernel"):
        condition_numbers(q, q, q, kernel="softmax")


# ----------------------------------------------------------------------------------------------------------
# Typical and extreme values


@pytest.mark.parametrize(("power", "typical"), [(2, 64.0), (4, 64 * 66 / 3)])
def test_random_directions_are_about_d_to_the_half_power(power, typical):
    """math.md 9: for random directions c_i is about d^{p/2} (p = 2), d(d+2)/3 = 1.4e3 (p = 4), d = 64."""
    inputs = sympow.testing.make_inputs(batch=(4,), T=64, d=64, e=8, seed=11)
    c = condition_numbers(inputs["q"], inputs["k"], inputs["v"], power=power)
    median = float(np.median(c))
    assert typical / 3 < median < 3 * typical, median


def test_nearly_orthogonal_cases_reach_ill_conditioning():
    seen: list[float] = []

    @settings(max_examples=200, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
    @given(case=nearly_orthogonal_cases())
    def draw(case):
        assert isinstance(case, AttentionCase) and case.normalize and case.kernel == "sympow"
        assert "rotary" not in case.inputs
        c = case.call(condition_numbers, np)
        assert c.shape == (*case.batch, case.T)
        assert np.all(c >= 1.0) and np.all(c <= 1e9)
        seen.append(float(np.max(c)))

    draw()
    assert max(seen) >= 1e6
    assert min(seen) < 10.0  # r = 0 draws are well conditioned


@settings(max_examples=10)
@given(case=nearly_orthogonal_cases(max_T=16, max_d=8))
def test_nearly_orthogonal_cases_run_through_attention(case):
    y = case.call(sympow.attention, np, backend="reference", form="parallel")
    assert y.shape == (*case.batch, case.T, case.e) and np.all(np.isfinite(y))


# ----------------------------------------------------------------------------------------------------------
# Per-row tolerances and their checker


def test_row_tolerances_law():
    c = np.array([[0.0, 1.0, 100.0, 1e6, 2e7, np.inf]])

    def law(tau, u, gamma=8.0):
        with np.errstate(divide="ignore", invalid="ignore"):
            bound = gamma * u * c / (1 - u * c)
        return np.where(u * c < 1, np.maximum(tau, bound), np.inf)

    assert GAMMA == 8.0 and state_path_gamma() == GAMMA and state_path_gamma(2080, 4096) == GAMMA
    expected = {
        ("float32", None): law(1e-4, U32),
        ("float16", None): law(2e-2, U32),
        ("float64", None): law(1e-10, 2.0**-53),
        ("float32", "float64"): law(1e-4, 2.0**-53),
    }
    for (dtype, state), want in expected.items():
        np.testing.assert_array_equal(row_tolerances(c, dtype, state), want)
    np.testing.assert_array_equal(row_tolerances(c, "float32", gamma=2.0), law(1e-4, U32, 2.0))
    assert np.isinf(row_tolerances(c, "float32")[0, 4])  # u c >= 1: no digit of that row is determined
    assert unit_roundoff("torch.float32") == U32
    with pytest.raises(ValueError, match="condition"):
        row_tolerances(np.array([-1.0]), "float32")


def test_well_conditioned_rows_keep_the_table():
    """Where c <= 100 (indeed up to tau / (gamma u), about 210 in float32) the tolerance is the table's."""
    c = np.linspace(0.0, 100.0, 11)
    np.testing.assert_array_equal(row_tolerances(c, "float32"), tolerance("float32"))
    np.testing.assert_array_equal(row_tolerances(c, "float64"), tolerance("float64"))
    assert row_tolerances(np.array([1e4]), "float32")[0] > tolerance("float32")


def planted(normalize):
    rng = np.random.default_rng(4)
    v = rng.standard_normal((2, 10, 3))
    y_ref = rng.standard_normal((2, 10, 3))
    scale = np.max(np.abs(v)) if normalize else np.max(np.abs(y_ref))
    y = y_ref + 1e-6 * scale * rng.standard_normal(y_ref.shape)
    y[1, 6, 2] += 5e-3 * scale  # a planted error in one row
    return y, y_ref, v


@pytest.mark.parametrize("normalize", [True, False])
def test_assert_close_rows_catches_a_planted_error(normalize):
    y, y_ref, v = planted(normalize)
    c = np.full((2, 10), 10.0)
    with pytest.raises(AssertionError) as info:
        assert_close_rows(y, y_ref, v, dtype_name="float32", normalize=normalize, condition=c, what="planted")
    message = str(info.value)
    assert message.startswith("planted: 1 of 20 rows") and "worst row (1, 6)" in message
    assert "condition number 1.000e+01" in message and "error 5.0" in message
    c[1, 6] = 1e6  # that row is ill-conditioned: its tolerance is 8 u32 1e6 / (1 - u32 1e6), about 0.5
    assert_close_rows(y, y_ref, v, dtype_name="float32", normalize=normalize, condition=c)
    assert_close_rows(y, y_ref, v, dtype_name="float32", normalize=normalize, condition=np.full(10, 1e6))
    with pytest.raises(AssertionError, match="rows exceed"):
        assert_close_rows(
            y, y_ref, v, dtype_name="float32", normalize=normalize, condition=c, state_dtype_name="float64"
        )


def test_assert_close_rows_checks_shape_finiteness_and_condition_shape():
    y, y_ref, v = planted(True)
    c = np.ones((2, 10))
    with pytest.raises(AssertionError, match="shape"):
        assert_close_rows(y[:, :5], y_ref, v, dtype_name="float32", normalize=True, condition=c)
    bad = y_ref.copy()
    bad[0, 2, 1] = np.nan
    with pytest.raises(AssertionError, match="non-finite"):
        assert_close_rows(bad, y_ref, v, dtype_name="float32", normalize=True, condition=c)
    with pytest.raises(AssertionError, match="condition numbers of shape"):
        assert_close_rows(y_ref, y_ref, v, dtype_name="float32", normalize=True, condition=np.ones(7))
    assert_close_rows(y_ref, y_ref, v, dtype_name="float64", normalize=True, condition=c)


@pytest.mark.parametrize("normalize", [True, False])
def test_row_errors_agree_with_relative_error(normalize):
    y, y_ref, v = planted(normalize)
    rows = relative_errors_by_row(y, y_ref, v, normalize=normalize)
    assert rows.shape == (2, 10)
    assert float(np.max(rows)) == relative_error(y, y_ref, v, normalize=normalize)
    assert int(np.argmax(rows)) == 16
