"""Resuming from a returned state equals one call; the state holds the documented sums."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import sympow
from sympow.spec.features import symmetric_power_features
from sympow.testing import assert_close, convert, make_inputs, to_numpy
from sympow.testing.strategies import FORMS, attention_cases, chunk_sizes, given_for
from tests.spec.test_forms import check_state_dtypes

pytestmark = pytest.mark.usefixtures("spec_backend")


def split(inputs, t):
    """(first t tokens, the rest) of an input dict; proportions split element-wise."""

    def cut(x, part):
        if x is None:
            return None
        if isinstance(x, tuple):
            return tuple(cut(a, part) for a in x)
        axis = x.ndim - 1 if x.ndim == inputs["q"].ndim - 1 else x.ndim - 2
        index = [slice(None)] * x.ndim
        index[axis] = slice(None, t) if part == 0 else slice(t, None)
        return x[tuple(index)]

    return tuple({key: cut(value, part) for key, value in inputs.items()} for part in (0, 1))


def concat(xp, a, b):
    if hasattr(xp, "concat"):
        return xp.concat([a, b], axis=-2)
    return xp.cat([a, b], dim=-2)  # torch


def resume(case, xp, t, first, second, chunks):
    """y of the first t tokens in form ``first``, then the rest in ``second`` from its state."""
    head, tail = split(case.inputs, t)
    y1, state = case.call(
        sympow.attention, xp, inputs=head, form=first, chunk_size=chunks[0], return_state=True
    )
    y2 = case.call(sympow.attention, xp, inputs=tail, form=second, chunk_size=chunks[1], initial_state=state)
    return to_numpy(np.concatenate([to_numpy(y1), to_numpy(y2)], axis=-2))


def test_split_and_resume_equals_one_call(xp):
    @given_for(xp, case=attention_cases(min_T=2, max_T=64), data=st.data())
    def check(case, data):
        t = data.draw(st.integers(1, case.T - 1), label="split")
        first = data.draw(st.sampled_from(FORMS), label="first form")
        second = data.draw(st.sampled_from(FORMS), label="second form")
        chunks = (data.draw(chunk_sizes(t)), data.draw(chunk_sizes(case.T - t)))
        y_ref = case.call(sympow.attention, np, dtype="float64", form="parallel")
        y = resume(case, xp, t, first, second, chunks)
        # a resumed call queries a state: the contract's tolerance (math.md 9), with c_i over every key
        case.assert_matches(y, y_ref, what=f"split at {t}: {first} then {second}, chunks {chunks}, {case}")

    check()


def test_split_and_resume_with_rotary_and_gates(xp):
    @given_for(
        xp,
        case=attention_cases(min_T=2, max_T=64, gate=True, rotary=True, dtypes=("float64",)),
        data=st.data(),
    )
    def check(case, data):
        t = data.draw(st.integers(1, case.T - 1), label="split")
        first = data.draw(st.sampled_from(FORMS), label="first form")
        second = data.draw(st.sampled_from(FORMS), label="second form")
        chunks = (data.draw(chunk_sizes(t)), data.draw(chunk_sizes(case.T - t)))
        y_ref = case.call(sympow.attention, np, form="parallel")
        y = resume(case, xp, t, first, second, chunks)
        case.assert_matches(y, y_ref, what=f"split at {t}: {first} then {second}, chunks {chunks}, {case}")

    check()


@given(case=attention_cases(min_T=3, max_T=40, dtypes=("float64",)), data=st.data())
def test_many_splits(case, data):
    """Cut into several pieces, each in a drawn form, the state threading through."""
    cuts = sorted(set(data.draw(st.lists(st.integers(1, case.T - 1), min_size=1, max_size=4))))
    y_ref = case.call(sympow.attention, np, form="parallel")
    state = None
    pieces = []
    rest = case.inputs
    done = 0
    for cut in [*cuts, case.T]:
        head, rest = split(rest, cut - done)
        form = data.draw(st.sampled_from(FORMS))
        y, state = case.call(
            sympow.attention,
            np,
            inputs=head,
            form=form,
            initial_state=state,
            return_state=True,
            chunk_size=data.draw(chunk_sizes(cut - done)),
        )
        pieces.append(to_numpy(y))
        done = cut
    case.assert_matches(np.concatenate(pieces, axis=-2), y_ref, what=f"cuts {cuts}")


@given(case=attention_cases(min_T=2, max_T=64, dtypes=("float64",)), data=st.data())
def test_final_state_does_not_depend_on_form_or_splits(case, data):
    """The true sums of the final state are the same whichever way the sequence was processed."""
    t = data.draw(st.integers(1, case.T - 1), label="split")
    forms = [data.draw(st.sampled_from(FORMS)) for _ in range(3)]
    _, whole = case.call(sympow.attention, np, form=forms[0], return_state=True)
    head, tail = split(case.inputs, t)
    _, mid = case.call(sympow.attention, np, inputs=head, form=forms[1], return_state=True)
    _, end = case.call(sympow.attention, np, inputs=tail, form=forms[2], initial_state=mid, return_state=True)
    for name, a, b in zip(("S", "z"), whole.unscaled(), end.unscaled(), strict=True):
        assert_close(b, a, dtype_name="float64", normalize=False, what=f"state {name}")
    if whole.mu is None:
        assert end.mu is None
    else:
        for fn in (np.cos, np.sin):
            np.testing.assert_allclose(fn(to_numpy(end.mu)), fn(to_numpy(whole.mu)), atol=1e-9)


def test_state_holds_the_documented_sums(xp):
    """z = sum_j W_j phi(k~_j), S = sum_j W_j phi(k~_j) v_j^T, mu = sum_l w_l (mod 2 pi), with
    phi(x) = phi_p(sigma^{1/2} x) and W_j the gates after token j."""

    @given_for(
        xp,
        case=attention_cases(min_T=1, max_T=30, kernels=("sympow",), proportions=False, dtypes=("float64",)),
    )
    def check(case):
        _, state = case.call(sympow.attention, xp, form="recurrent", return_state=True)
        x = case.inputs
        sigma = case.d**-0.5 if case.scale is None else case.scale
        k = np.array(x["k"], dtype=np.float64)
        if "rotary" in x:
            mu = np.cumsum(x["rotary"], axis=-2)
            k = rotate(k, mu, case.rotary_layout)
            np.testing.assert_allclose(np.cos(to_numpy(state.mu)), np.cos(mu[..., -1, :]), atol=1e-9)
            np.testing.assert_allclose(np.sin(to_numpy(state.mu)), np.sin(mu[..., -1, :]), atol=1e-9)
        else:
            assert state.mu is None
        features = symmetric_power_features(math.sqrt(sigma) * k, case.power)  # [..., T, D]
        weights = np.ones(k.shape[:-1])
        if "log_gate" in x:
            g = x["log_gate"]
            after = np.cumsum(g[..., ::-1], axis=-1)[..., ::-1] - g  # sum_{l > j} g_l
            weights = np.exp(after)
        z = np.sum(weights[..., None] * features, axis=-2)
        S = np.einsum("...t,...tf,...te->...fe", weights, features, x["v"])
        S_got, z_got = state.unscaled()
        assert_close(z_got, z, dtype_name="float64", normalize=False, what="z")
        assert_close(S_got, S, dtype_name="float64", normalize=False, what="S")

    check()


def rotate(x, mu, layout):
    """R(mu) x, vectorised (checked against the brute force's rotation in test_features)."""
    half = x.shape[-1] // 2
    cos, sin = np.cos(mu), np.sin(mu)
    if layout == "half":
        a, b = x[..., :half], x[..., half:]
        return np.concatenate([a * cos - b * sin, a * sin + b * cos], axis=-1)
    out = np.empty_like(x)
    a, b = x[..., 0::2], x[..., 1::2]
    out[..., 0::2] = a * cos - b * sin
    out[..., 1::2] = a * sin + b * cos
    return out


@pytest.mark.parametrize("form", FORMS)
def test_zero_state_equals_no_state(xp, form):
    """A hand-built all-zero State (with mu = 0) changes nothing."""
    inputs = make_inputs(batch=(2,), T=13, d=4, e=3, seed=11, gate=True, rotary=True)
    arrays = convert(inputs, xp, "float64")
    y_ref = sympow.attention(
        arrays["q"],
        arrays["k"],
        arrays["v"],
        log_gate=arrays["log_gate"],
        rotary=arrays["rotary"],
        form="parallel",
    )
    D = math.comb(4 + 2 - 1, 2)
    zeros = convert(
        {"S": np.zeros((2, D, 3)), "z": np.zeros((2, D)), "mu": np.zeros((2, 2)),
         "log_scale": np.zeros(2)},
        xp, "float64",
    )  # fmt: skip
    state = sympow.State(**zeros)
    y = sympow.attention(
        arrays["q"],
        arrays["k"],
        arrays["v"],
        log_gate=arrays["log_gate"],
        rotary=arrays["rotary"],
        form=form,
        initial_state=state,
        chunk_size=4,
    )
    assert_close(y, y_ref, inputs["v"], dtype_name="float64", normalize=True, what=form)


@pytest.mark.parametrize("form", FORMS)
def test_state_is_usable_across_namespaces_dtype(xp, form):
    """A float32 state (p = 2: the contract's state dtype for float32 inputs is float32, math.md 9)
    resumes float32 inputs, and the state after the resumed call is float32 and finite too; the two
    calls together equal one float64 call."""
    inputs = make_inputs(T=20, d=4, e=2, seed=2, gate=True, dtype="float32")
    head, tail = split(inputs, 7)
    a = convert(head, xp, "float32")
    b = convert(tail, xp, "float32")
    y1, state = sympow.attention(
        a["q"], a["k"], a["v"], log_gate=a["log_gate"], form=form, return_state=True, chunk_size=3
    )
    y2, resumed = sympow.attention(
        b["q"], b["k"], b["v"], log_gate=b["log_gate"], form=form, initial_state=state, chunk_size=3,
        return_state=True,
    )  # fmt: skip
    for name, s in (("first", state), ("resumed", resumed)):
        check_state_dtypes(s, a["q"])
        for field in (s.S, s.z, s.log_scale):
            assert str(field.dtype).rsplit(".", 1)[-1] == "float32", f"{name} state: {field.dtype}"
            assert np.isfinite(to_numpy(field)).all(), f"{name} state is not finite"
    assert y2.dtype == b["q"].dtype
    whole = convert(inputs, np, "float64")
    y_ref = sympow.attention(whole["q"], whole["k"], whole["v"], log_gate=whole["log_gate"])
    y = np.concatenate([to_numpy(y1), to_numpy(y2)], axis=-2)
    assert_close(y, y_ref, inputs["v"], dtype_name="float32", normalize=True, what=form)
