"""The jax backend against the float64 reference: every form, kernel and weight; states; vmap; a
compiled graph whose size does not grow with T."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import sympow
from sympow.testing import assert_close, convert, make_inputs, to_numpy
from sympow.testing.strategies import FORMS, attention_cases, chunk_sizes
from tests.spec.test_state import split

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")
jax_core = pytest.importorskip("jax.extend.core")

# Every new shape is a new compilation (about a second each on 2 cores): fewer, richer examples.
FEW = settings(max_examples=6)


def reference(case, **overrides):
    return case.call(sympow.attention, np, dtype="float64", form="parallel", backend="reference", **overrides)


@FEW
@given(case=attention_cases(max_T=64))
def test_forms_match_reference(case):
    y_ref = reference(case)
    for form in FORMS:
        y = case.call(sympow.attention, jnp, form=form, backend="jax")
        assert isinstance(y, jax.Array) and y.dtype == case.arrays(jnp)["q"].dtype
        assert tuple(y.shape) == (*case.batch, case.T, case.e)
        assert_close(
            y, y_ref, case.inputs["v"], dtype_name=case.dtype, normalize=case.normalize,
            what=f"jax {form} {case}",
        )  # fmt: skip


@FEW
@given(case=attention_cases(min_T=2, max_T=48), data=st.data())
def test_resume_in_any_form_and_from_the_reference(case, data):
    t = data.draw(st.integers(1, case.T - 1), label="split")
    first, second = (data.draw(st.sampled_from(FORMS)) for _ in range(2))
    backends = data.draw(st.sampled_from([("jax", "jax"), ("reference", "jax"), ("jax", "reference")]))
    head, tail = split(case.inputs, t)
    y1, state = case.call(
        sympow.attention, jnp, inputs=head, form=first, chunk_size=data.draw(chunk_sizes(t)),
        return_state=True, backend=backends[0],
    )  # fmt: skip
    y2 = case.call(
        sympow.attention, jnp, inputs=tail, form=second, initial_state=state,
        chunk_size=data.draw(chunk_sizes(case.T - t)), backend=backends[1],
    )  # fmt: skip
    y = np.concatenate([to_numpy(y1), to_numpy(y2)], axis=-2)
    assert_close(
        y, reference(case), case.inputs["v"], dtype_name=case.dtype, normalize=case.normalize,
        what=f"{backends[0]} {first} -> {backends[1]} {second} at {t}",
    )  # fmt: skip


@pytest.mark.parametrize("form", FORMS)
def test_vmap_equals_the_batched_call(form):
    inputs = make_inputs(batch=(3,), T=21, d=4, e=2, seed=4, gate=True, rotary=True, proportions=True)
    x = convert(inputs, jnp, "float64")

    def one(q, k, v, g, a, b, w):
        return sympow.attention(
            q, k, v, log_gate=g, proportions=(a, b), rotary=w, form=form, chunk_size=5, backend="jax"
        )

    args = (x["q"], x["k"], x["v"], x["log_gate"], *x["proportions"], x["rotary"])
    mapped = jax.vmap(one)(*args)
    assert_close(mapped, one(*args), inputs["v"], dtype_name="float64", normalize=True, what=form)
    assert_close(mapped, reference_of(inputs), inputs["v"], dtype_name="float64", normalize=True)


def reference_of(inputs):
    return sympow.attention(
        inputs["q"], inputs["k"], inputs["v"], log_gate=inputs["log_gate"], rotary=inputs["rotary"],
        proportions=inputs["proportions"], chunk_size=5, backend="reference",
    )  # fmt: skip


def test_float64_under_x64():
    assert jax.config.jax_enable_x64
    x = convert(make_inputs(T=9, d=4, e=2, seed=1, rotary=True), jnp, "float64")
    y, state = sympow.attention(x["q"], x["k"], x["v"], rotary=x["rotary"], return_state=True, backend="jax")
    assert y.dtype == jnp.float64 and state.S.dtype == jnp.float64 and state.mu.dtype == jnp.float64


@pytest.mark.parametrize("form", ["chunked", "recurrent"])
def test_compiled_graph_does_not_grow_with_T(form):
    """The chunked and recurrent forms are one lax.scan: the same program at T = 256 and T = 4096."""
    from sympow.backends import jax_native
    from sympow.spec import validate

    def size(T: int) -> int:
        x = convert(make_inputs(T=T, d=8, e=4, seed=0, gate=True, rotary=True), jnp, "float32")
        request = validate(
            x["q"], x["k"], x["v"], kernel="sympow", power=2, scale=0.25, log_gate=x["log_gate"],
            proportions=None, rotary=x["rotary"], rotary_layout="half", normalize=True, eps=0.0,
            form=form, chunk_size=64, initial_state=None, return_state=True,
        )  # fmt: skip
        static = request.without_arrays()
        jaxpr = jax.make_jaxpr(lambda a: jax_native.forward(a, static=static, form=form))(request.arrays())
        return count_equations(jaxpr.jaxpr)

    assert size(256) == size(4096)


def count_equations(jaxpr) -> int:
    total = 0
    for equation in jaxpr.eqns:
        total += 1
        for sub in jax_core.jaxprs_in_params(equation.params):
            total += count_equations(sub)
    return total
