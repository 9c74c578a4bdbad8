"""The exact symmetric feature map: phi_p(x) . phi_p(y) = (x . y)^p, its size and its table."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sympow.spec.features import feature_table, symmetric_power_features
from sympow.testing import convert, to_numpy
from sympow.testing.strategies import given_for, head_dims, powers, seeds
from tests.brute_force import rotate_pairs
from tests.spec.test_state import rotate

pytestmark = pytest.mark.usefixtures("spec_backend")


def test_inner_product_is_power_of_inner_product(xp):
    @given_for(xp, d=head_dims(), p=powers(), seed=seeds(), n=st.integers(1, 5))
    def check(d, p, seed, n):
        rng = np.random.default_rng(seed)
        x = rng.uniform(-2.0, 2.0, (n, d))
        y = rng.uniform(-2.0, 2.0, (n, d))
        arrays = convert({"x": x, "y": y}, xp, "float64")
        fx = symmetric_power_features(arrays["x"], p)
        fy = symmetric_power_features(arrays["y"], p)
        assert type(fx) is type(arrays["x"])
        assert fx.dtype == arrays["x"].dtype
        assert tuple(fx.shape) == (n, math.comb(d + p - 1, p))
        got = np.sum(to_numpy(fx) * to_numpy(fy), axis=-1)
        expected = np.sum(x * y, axis=-1) ** p
        # Rounding: relative to the sum of |terms|, (|x| . |y|)^p.
        bound = np.sum(np.abs(x) * np.abs(y), axis=-1) ** p
        assert np.all(np.abs(got - expected) <= 1e-12 * bound + 1e-300), (got, expected)

    check()


@given(d=head_dims(max_d=5), p=powers(max_p=4), seed=seeds())
def test_equals_the_full_tensor_power(d, p, seed):
    """phi_p(x) . phi_p(y) equals <x^{(x)p}, y^{(x)p}> summed over all d^p index tuples."""
    rng = np.random.default_rng(seed)
    x, y = rng.standard_normal(d), rng.standard_normal(d)
    full = math.fsum(
        math.prod(x[i] for i in idx) * math.prod(y[i] for i in idx)
        for idx in itertools.product(range(d), repeat=p)
    )
    got = float(np.dot(symmetric_power_features(x, p), symmetric_power_features(y, p)))
    assert got == pytest.approx(full, rel=1e-12, abs=1e-12 * np.dot(np.abs(x), np.abs(y)) ** p)


@given(d=head_dims(), p=powers())
def test_table(d, p):
    indices, coefficients = feature_table(d, p)
    size = math.comb(d + p - 1, p)
    assert len(indices) == len(coefficients) == size
    assert len(set(indices)) == size
    for multiset, c in zip(indices, coefficients, strict=True):
        assert len(multiset) == p
        assert list(multiset) == sorted(multiset)
        assert all(0 <= i < d for i in multiset)
        counts = [multiset.count(i) for i in set(multiset)]
        multinomial = math.factorial(p) / math.prod(math.factorial(a) for a in counts)
        assert c == pytest.approx(math.sqrt(multinomial), rel=1e-14)
    # sum of the multinomial coefficients: the number of index tuples, d^p
    assert math.fsum(c * c for c in coefficients) == pytest.approx(d**p, rel=1e-12)
    assert feature_table(d, p) is feature_table(d, p)  # cached


def test_p_zero_and_one():
    x = np.array([[1.5, -2.0, 0.25]])
    assert np.array_equal(symmetric_power_features(x, 0), np.ones((1, 1)))
    assert np.allclose(symmetric_power_features(x, 1), x)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_keeps_dtype_and_leading_axes(xp, dtype):
    x = convert({"x": np.random.default_rng(0).standard_normal((2, 3, 4))}, xp, dtype)["x"]
    f = symmetric_power_features(x, 3, xp=None)
    assert type(f) is type(x)
    assert f.dtype == x.dtype
    assert tuple(f.shape) == (2, 3, math.comb(6, 3))


@given(d=head_dims(even=True), seed=seeds(), layout=st.sampled_from(["half", "interleaved"]))
def test_brute_force_rotation_matches_vectorised_rotation(d, seed, layout):
    """The two rotations the tests use agree, and preserve norms and inner products."""
    rng = np.random.default_rng(seed)
    x, y = rng.standard_normal(d), rng.standard_normal(d)
    mu = rng.uniform(-10, 10, d // 2)
    a = rotate_pairs(x, mu, layout)
    np.testing.assert_allclose(a, rotate(x[None], mu[None], layout)[0], rtol=1e-14, atol=1e-14)
    np.testing.assert_allclose(np.dot(a, rotate_pairs(y, mu, layout)), np.dot(x, y), rtol=1e-12, atol=1e-12)


def test_both_constructions_give_the_same_bits(xp, monkeypatch):
    """``monomials`` takes few tokens' products from an outer product (``suffix_positions``) and many
    tokens' as d joined blocks: the same products, bit for bit, whichever way is taken."""
    from sympow.spec import features

    @given_for(xp, d=head_dims(max_d=12), p=powers(max_p=4), seed=seeds())
    def check(d, p, seed):
        x = np.random.default_rng(seed).standard_normal((3, 5, d))
        arrays = convert({"x": x}, xp, "float32")
        few = to_numpy(symmetric_power_features(arrays["x"], p))
        with monkeypatch.context() as patch:
            patch.setattr(features, "OUTER_PRODUCT_ENTRIES", 0)  # every degree by joined blocks
            many = to_numpy(symmetric_power_features(arrays["x"], p))
        np.testing.assert_array_equal(few, many)

    check()
