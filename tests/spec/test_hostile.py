"""Hostile inputs (``sympow.testing.hostile``) are refused before computing, on every namespace.

api.md: bad input raises ValueError or TypeError naming the argument, and nothing is computed on it.
Each test runs on every namespace of the ``xp`` fixture; ``assert_refused`` replaces the backends' ``run``
by a tripwire, so an error raised while computing (or a call that is not refused) fails.
"""

from __future__ import annotations

from unittest import mock

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import sympow
from sympow import backends
from sympow.testing import convert
from sympow.testing.hostile import (
    CATALOGUE,
    ComputedError,
    HostileCall,
    assert_refused,
    catalogue_for,
    hostile_calls,
    library_of,
    valid_calls,
)


class Reached(Exception):
    """Validation passed: the call reached the choice of a backend."""


def passes_validation(kwargs: dict) -> bool:
    with mock.patch.object(backends, "select", side_effect=Reached):
        try:
            sympow.attention(**kwargs)
        except Reached:
            return True
    return False


@given(data=st.data())
def test_hostile_calls_are_refused_before_computing(xp, data):
    assert_refused(data.draw(hostile_calls(xp), label="hostile call"))


@settings(max_examples=1)
@given(data=st.data())
def test_every_entry_of_the_catalogue_is_refused(xp, data):
    """One draw of every entry that applies to this library (the random test above samples them)."""
    for corruption in catalogue_for(library_of(xp)):
        assert_refused(data.draw(hostile_calls(xp, corruption), label=corruption.label))


@settings(max_examples=1)
@given(data=st.data())
def test_the_uncorrupted_calls_are_valid(xp, data):
    """The base of every entry passes the checks, so each refusal is the corruption's doing. Bases draw
    empty states (log_scale = -inf) among others: valid, not hostile."""
    bases = {repr(sorted(c.base.items())): c.base for c in catalogue_for(library_of(xp))}
    for base in bases.values():
        call = data.draw(valid_calls(xp, base), label=repr(base))
        assert passes_validation(call.kwargs()), base


def test_an_empty_state_is_valid(xp):
    """log_scale = -inf is an empty state: accepted, unlike NaN and +inf (sympow p = 2, d = 2: D = 3)."""
    arrays = convert({"q": np.ones((2, 3, 2)), "S": np.zeros((2, 3, 2)), "z": np.zeros((2, 3)),
                      "log_scale": np.full(2, -np.inf)}, xp)  # fmt: skip
    state = sympow.State(S=arrays["S"], z=arrays["z"], mu=None, log_scale=arrays["log_scale"])
    q = arrays["q"]
    assert passes_validation({"q": q, "k": q, "v": q, "initial_state": state})


def test_a_call_that_computes_trips_the_wire():
    q = np.ones((3, 2))
    with pytest.raises(ComputedError, match="was not refused"):
        assert_refused(HostileCall({"q": q, "k": q, "v": q}, "q", ValueError, "valid"))


def test_a_wrong_class_or_a_message_without_the_name_fails():
    q = np.ones((3, 2))
    with pytest.raises(AssertionError, match="expected TypeError"):
        assert_refused(HostileCall({"q": q, "k": q, "v": q, "eps": -1.0}, "eps", TypeError, "eps"))
    with pytest.raises(AssertionError, match="does not name 'scale'"):
        assert_refused(HostileCall({"q": q, "k": q, "v": q, "eps": -1.0}, "scale", ValueError, "eps"))


def test_the_catalogue_holds_every_kind():
    labels = " | ".join(c.label for c in CATALOGUE)
    for kind in ("with 1 axes", "T + 1", "batch (3,)", "odd d", "int64", "bool", "complex128",
                 "another float dtype", "longdouble", "float8", "another library", "meta device",
                 "sparse", "masked", "nan in q", "inf in initial_state.z", "-inf in rotary",
                 "nan in initial_state.log_scale", "log_gate 0.5", "proportions[0] 1.5", "power=0",
                 "taylor power=171", "power=10**6", "relu with power=3", "kernel=", "scale=", "eps > 0",
                 "form=", "chunk_size=", "rotary_layout=", "normalize=", "return_state=", "state_dtype=",
                 "backend=", "not a State", "State of relu", "State of identity"):  # fmt: skip
        assert kind in labels, kind
    assert all(c.error in (ValueError, TypeError) for c in CATALOGUE)
    assert {c.label for c in catalogue_for("torch")} > {c.label for c in catalogue_for("array_api_strict")}
