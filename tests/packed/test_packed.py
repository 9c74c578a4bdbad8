"""Packed sequences (math.md 10): a call with ``cu_seqlens`` equals the loop of separate calls on each
slice, outputs and every per-sequence State; padding changes nothing; bad offsets are refused by name.

The loop runs on NumPy with the reference backend in float64 (``sympow.testing.packed.per_sequence``),
the packed call on each namespace with its default backend (native torch and jax) or the reference.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import strategies as st

import sympow
from sympow.testing import convert, make_inputs, to_numpy, tolerance
from sympow.testing.packed import TOKEN_INPUTS, per_sequence, slice_inputs
from sympow.testing.strategies import FORMS, attention_cases, given_for, packed_offsets
from sympow.variants import VARIANTS, variant_parameters

pytestmark = pytest.mark.usefixtures("spec_backend")
TOL = tolerance("float64")


def prelude_states(case, count: int, seed: int):
    """One State per sequence, each from a separate call on 1..3 random tokens with the case's options
    (NumPy, float64): the initial states of a packed call."""
    lengths = np.random.default_rng(seed).integers(1, 4, size=count)
    offsets = [0, *np.cumsum(lengths).tolist()]
    inputs = make_inputs(
        batch=case.batch, T=offsets[-1], d=case.d, e=case.e, seed=seed, gate="log_gate" in case.inputs,
        rotary="rotary" in case.inputs, proportions="proportions" in case.inputs,
    )  # fmt: skip
    options = {**case.options, "backend": "reference", "return_state": True}
    return per_sequence(sympow.attention, inputs, offsets, **options)[1]


def unscaled(state):
    """(S, z, mu) of a State as NumPy float64, the sums multiplied out of their log scale."""
    state = type(state)(*(None if x is None else to_numpy(x).astype(np.float64) for x in state))
    S, z = state.unscaled()
    return S, z, state.mu


def assert_states_close(state, expected, what: str) -> None:
    """Every sequence's true sums S, z within TOL of the expected ones (relative to their largest entry),
    and its rotary angle equal modulo 2 pi."""
    for got, want, name in zip(unscaled(state), unscaled(expected), ("S", "z", "mu"), strict=True):
        if want is None:
            assert got is None, f"{what}: {name} is set, expected None"
            continue
        if name == "mu":
            error = np.abs(np.angle(np.exp(1j * (got - want)))).max(initial=0.0)
            assert error <= TOL, f"{what}: mu differs by {error:.3g} radians"
            continue
        scale = max(1.0, np.abs(want).max(initial=0.0))
        error = np.abs(got - want).max(initial=0.0) / scale
        assert error <= TOL, f"{what}: {name} differs by {error:.3g} relative"


def packed_call(case, xp, offsets, *, initial_state=None, inputs=None, **options):
    arrays = case.arrays(xp, "float64") if inputs is None else convert(inputs, xp, "float64")
    if initial_state is not None:
        initial_state = type(initial_state)(*(None if x is None else convert({"x": x}, xp)["x"]
                                              for x in initial_state))  # fmt: skip
    return sympow.attention(
        arrays["q"], arrays["k"], arrays["v"], log_gate=arrays.get("log_gate"),
        proportions=arrays.get("proportions"), rotary=arrays.get("rotary"), chunk_size=case.chunk_size,
        cu_seqlens=offsets, initial_state=initial_state, return_state=True, **case.options, **options,
    )  # fmt: skip


def loop_call(case, offsets, *, initial_state=None, inputs=None):
    options = {**case.options, "backend": "reference", "return_state": True, "form": "parallel"}
    source = case.inputs if inputs is None else inputs
    return per_sequence(sympow.attention, source, offsets, initial_state=initial_state, **options)


def as_offsets(offsets, xp, kind: str):
    """The offsets as a Python list or as an integer array of ``xp``."""
    if kind == "list":
        return list(offsets)
    return convert({"o": np.asarray(offsets)}, xp, "int64")["o"] if kind == "int64" else \
        xp.asarray(np.asarray(offsets, dtype=np.int32))  # fmt: skip


@pytest.mark.parametrize("form", (*FORMS, "auto"))
def test_packed_equals_separate_calls(xp, form):
    """Random offsets (empty and length-1 sequences, boundaries on and off chunk edges, one sequence,
    T sequences), initial states given or not, every kernel, gates, rotary and proportions drawn."""

    @given_for(xp, case=attention_cases(max_T=40, max_features=120, dtypes=("float64",)), data=st.data())
    def check(case, data):
        offsets = data.draw(packed_offsets(case.T, case.chunk_size), label="offsets")
        resumed = data.draw(st.booleans(), label="initial states")
        initial = prelude_states(case, len(offsets) - 1, case.seed) if resumed else None
        kind = data.draw(st.sampled_from(["list", "int64", "int32"]), label="offsets as")
        y, state = packed_call(case, xp, as_offsets(offsets, xp, kind), initial_state=initial, form=form)
        y_ref, state_ref = loop_call(case, offsets, initial_state=initial)
        what = f"{form} offsets={offsets} {case}"
        assert tuple(y.shape) == tuple(y_ref.shape), what
        error = np.abs(to_numpy(y) - y_ref).max() / max(1.0, np.abs(case.inputs["v"]).max())
        assert error <= TOL, f"{what}: y differs by {error:.3g}"
        assert next(iter(state.S.shape)) == len(offsets) - 1, what
        assert_states_close(state, state_ref, what)

    check()


def test_padding_changes_nothing(xp):
    """Tokens appended after each sequence, as a sequence of their own and with values up to 1e4, change
    neither the outputs of the sequences' tokens nor their States; tokens appended at the end of a
    sequence leave the outputs of the tokens before them unchanged."""

    @given_for(xp, case=attention_cases(max_T=24, max_features=120, dtypes=("float64",)), data=st.data())
    def check(case, data):
        offsets = data.draw(packed_offsets(case.T, case.chunk_size), label="offsets")
        count = len(offsets) - 1
        pads = data.draw(st.lists(st.integers(0, 5), min_size=count, max_size=count), label="pads")
        magnitude = data.draw(st.sampled_from([1.0, 1e2, 1e4]), label="padding magnitude")
        noise = make_inputs(
            batch=case.batch, T=sum(pads) + 1, d=case.d, e=case.e, seed=case.seed + 1,
            gate="log_gate" in case.inputs, rotary="rotary" in case.inputs,
            proportions="proportions" in case.inputs, q_scale=magnitude,
        )  # fmt: skip
        parts, kept, padded_offsets, taken = [], [], [0], 0
        for n in range(count):
            lo, hi = offsets[n], offsets[n + 1]
            parts.append(slice_inputs(case.inputs, lo, hi))
            parts.append(_louder(slice_inputs(noise, taken, taken + pads[n]), magnitude))
            kept.extend(range(padded_offsets[-1], padded_offsets[-1] + hi - lo))
            padded_offsets += [padded_offsets[-1] + hi - lo, padded_offsets[-1] + hi - lo + pads[n]]
            taken += pads[n]
        padded = _join(parts)
        y, state = packed_call(case, xp, offsets)
        y_pad, state_pad = packed_call(case, xp, padded_offsets, inputs=padded)
        y_kept = to_numpy(y_pad)[..., kept, :]
        error = np.abs(y_kept - to_numpy(y)).max() / max(1.0, np.abs(case.inputs["v"]).max())
        assert error <= TOL, f"padding {pads} changed y by {error:.3g}"
        own = type(state_pad)(*(None if x is None else x[0::2, ...] for x in state_pad))
        assert_states_close(own, state, f"padding {pads}")
        # appended to the last sequence itself: the earlier tokens' outputs stay
        extended = _join([case.inputs, slice_inputs(noise, 0, 1)])
        y_ext, _ = packed_call(case, xp, [*offsets[:-1], case.T + 1], inputs=extended)
        error = np.abs(to_numpy(y_ext)[..., : case.T, :] - to_numpy(y)).max()
        assert error <= TOL * max(1.0, np.abs(case.inputs["v"]).max()), "a token appended changed y"

    check()


def _louder(inputs, magnitude):
    """Padding: k and v (and q through ``make_inputs``' q_scale) up to ``magnitude``."""
    return {**inputs, "k": inputs["k"] * magnitude, "v": inputs["v"] * magnitude}


def _join(parts):
    """Input dicts joined along T."""
    out = {}
    for name in parts[0]:
        if name == "proportions":
            out[name] = tuple(np.concatenate([p[name][i] for p in parts], axis=-1) for i in range(2))
        else:
            axis = -TOKEN_INPUTS[name]
            out[name] = np.concatenate([p[name] for p in parts], axis=axis)
    return out


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_every_variant_packs(name):
    """Each named variant with ``cu_seqlens`` equals its separate calls on the slices (per-token parameters
    cut with them), outputs and per-sequence States, in every form."""
    offsets = [0, 2, 2, 3, 11, 17]
    T, batch = offsets[-1], (2,)
    inputs = make_inputs(batch=batch, T=T, d=4, e=3, seed=5)
    parameters = variant_parameters(name, batch, T, 4, seed=5)
    variant = VARIANTS[name]
    for form in FORMS:
        options = {"form": form, "chunk_size": 4, "return_state": True, "backend": "reference"}
        y, state = variant(inputs["q"], inputs["k"], inputs["v"], **parameters, cu_seqlens=offsets, **options)
        ys, states = [], []
        for lo, hi in itertools.pairwise(offsets):
            if hi == lo:
                continue
            own = {key: value[..., lo:hi] if key in ("gate_logits", "rotary_logits") else value
                   for key, value in parameters.items()}  # fmt: skip
            part = slice_inputs(inputs, lo, hi)
            y_n, state_n = variant(part["q"], part["k"], part["v"], **own, **options)
            ys.append(y_n)
            states.append((lo, state_n))
        error = np.abs(y - np.concatenate(ys, axis=-2)).max()
        assert error <= TOL * max(1.0, np.abs(inputs["v"]).max()), f"{name} {form}: y differs by {error}"
        for lo, state_n in states:
            n = max(i for i in range(len(offsets) - 1) if offsets[i] == lo and offsets[i + 1] > lo)
            got = type(state)(*(None if x is None else x[n] for x in state))
            assert_states_close(got, state_n, f"{name} {form} sequence {n}")
