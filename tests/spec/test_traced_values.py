"""Where the value checks cannot run (under jax.jit and jax.vmap), forbidden values give NaN, never a
finite output (issue 12, item 4; docs/math.md section 7, ``sympow/spec/poison.py``).

Before: under jit a NaN in q gave an exactly zero row, and a NaN in k or a positive gate a finite output.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest

import sympow
from sympow.testing import convert, make_inputs

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")

T, BAD = 6, 3  # the forbidden value sits at token BAD

# where it is planted -> the rows that must be NaN ("own": row BAD only; "causal": rows BAD..T-1; "all")
PLANTS = {
    "q nan": ("q", math.nan, "own"),
    "q inf": ("q", math.inf, "own"),
    "k nan": ("k", math.nan, "causal"),
    "v inf": ("v", -math.inf, "causal"),
    "rotary nan": ("rotary", math.nan, "causal"),
    "log_gate positive": ("log_gate", 0.5, "causal"),
    "log_gate nan": ("log_gate", math.nan, "causal"),
    "proportion a above 1": ("a", 1.5, "own"),
    "proportion b below 0": ("b", -0.25, "causal"),
    "state S nan": ("S", math.nan, "all"),
    "state z inf": ("z", math.inf, "all"),
    "state mu nan": ("mu", math.nan, "all"),
    "state log_scale +inf": ("log_scale", math.inf, "all"),
    "state log_scale nan": ("log_scale", math.nan, "all"),
}


def _inputs():
    inputs = convert(make_inputs(T=T, d=4, e=3, seed=5, gate=True, rotary=True, proportions=True), jnp)
    first = convert(make_inputs(T=4, d=4, e=3, seed=6, gate=True, rotary=True, proportions=True), jnp)
    _, state = sympow.attention(
        first["q"], first["k"], first["v"], log_gate=first["log_gate"], rotary=first["rotary"],
        proportions=first["proportions"], return_state=True,
    )  # fmt: skip
    return inputs, state


def _plant(inputs, state, where, value):
    inputs = dict(inputs)
    a, b = inputs["proportions"]
    if where in ("q", "k", "v", "rotary"):
        inputs[where] = inputs[where].at[BAD, 0].set(value)
    elif where == "log_gate":
        inputs[where] = inputs[where].at[BAD].set(value)
    elif where == "a":
        inputs["proportions"] = (a.at[BAD].set(value), b)
    elif where == "b":
        inputs["proportions"] = (a, b.at[BAD].set(value))
    else:
        field = getattr(state, where)
        state = state._replace(**{where: field.reshape(-1).at[0].set(value).reshape(field.shape)})
    return inputs, state


def _attend(form):
    def call(inputs, state):
        return sympow.attention(
            inputs["q"], inputs["k"], inputs["v"], log_gate=inputs["log_gate"], rotary=inputs["rotary"],
            proportions=inputs["proportions"], initial_state=state, form=form, chunk_size=4,
            return_state=True,
        )  # fmt: skip

    return call


@functools.cache
def _jitted(form, backend):
    """One compiled function per (form, backend), traced once under ``use(backend)``."""
    del backend  # part of the cache key only
    return jax.jit(_attend(form))


@pytest.mark.parametrize("backend", ["jax", "reference"])
@pytest.mark.parametrize("form", ["parallel", "recurrent", "chunked"])
@pytest.mark.parametrize("plant", list(PLANTS))
def test_forbidden_values_under_jit_give_nan(plant, form, backend):
    where, value, reach = PLANTS[plant]
    inputs, state = _inputs()
    bad_inputs, bad_state = _plant(inputs, state, where, value)
    if where not in ("S", "z", "mu", "log_scale"):
        with pytest.raises(ValueError):  # eager: refused before computing
            _attend(form)(bad_inputs, bad_state)
    with sympow.backends.use(backend):
        y, after = _jitted(form, backend)(bad_inputs, bad_state)
    rows = {"own": [BAD], "causal": list(range(BAD, T)), "all": list(range(T))}[reach]
    nan_rows = np.isnan(np.asarray(y)).any(axis=-1)
    assert nan_rows[rows].all(), f"{plant}: rows {rows} must be NaN, NaN rows are {np.flatnonzero(nan_rows)}"
    if reach != "own":
        for field in ("S", "z", "log_scale"):
            assert np.isnan(np.asarray(getattr(after, field))).all(), f"{plant}: state.{field} not NaN"


@pytest.mark.parametrize("form", ["parallel", "recurrent", "chunked"])
def test_allowed_values_under_jit_are_unchanged(form):
    """The flags add exactly zero: jit equals eager on clean inputs (eager runs the same algorithm)."""
    inputs, state = _inputs()
    y_jit, state_jit = jax.jit(_attend(form))(inputs, state)
    y, after = _attend(form)(inputs, state)
    np.testing.assert_allclose(np.asarray(y_jit), np.asarray(y), rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(np.asarray(state_jit.S), np.asarray(after.S), rtol=1e-12, atol=1e-13)
    assert not np.isnan(np.asarray(y_jit)).any()


def test_vmap_poisons_only_the_batch_entry_that_holds_the_value():
    inputs, state = _inputs()
    bad, _ = _plant(inputs, state, "k", math.nan)
    stacked = {key: (tuple(jnp.stack([x, y]) for x, y in zip(value, bad[key], strict=True))
                     if isinstance(value, tuple) else jnp.stack([value, bad[key]]))
               for key, value in inputs.items()}  # fmt: skip
    y, _ = jax.vmap(lambda i: _attend("chunked")(i, None))(stacked)
    y = np.asarray(y)
    assert not np.isnan(y[0]).any()
    assert np.isnan(y[1, BAD:]).all()
