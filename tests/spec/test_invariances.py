"""Invariances: zero gates, a global rotation, the scale of normalised sympow, batch entries."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import strategies as st

import sympow
from sympow.testing import assert_close, to_numpy
from sympow.testing.strategies import FORMS, attention_cases, given_for

pytestmark = pytest.mark.usefixtures("spec_backend")

forms = st.sampled_from(FORMS)


def test_zero_log_gate_equals_no_gate(xp):
    @given_for(xp, case=attention_cases(max_T=64, gate=False), form=forms)
    def check(case, form):
        y_ref = case.call(sympow.attention, xp, form=form)
        zero = case.with_inputs(log_gate=np.zeros((*case.batch, case.T), dtype=case.dtype))
        y = zero.call(sympow.attention, xp, form=form)
        assert_close(
            y,
            y_ref,
            case.inputs["v"],
            dtype_name=case.dtype,
            normalize=case.normalize,
            what=f"{form} {case}",
        )

    check()


def test_global_rotation_changes_nothing(xp):
    """Adding one angle vector c to the first increment shifts every mu_t by c: all scores
    <R(mu_i + c) q_i, R(mu_j + c) k_j> are unchanged (not for relu, which rectifies after
    rotating)."""

    @given_for(
        xp,
        case=attention_cases(max_T=64, rotary=True, kernels=("sympow", "taylor", "identity")),
        form=forms,
        data=st.data(),
    )
    def check(case, form, data):
        angles = data.draw(
            st.lists(st.floats(-100.0, 100.0), min_size=case.d // 2, max_size=case.d // 2), label="c"
        )
        rotary = np.array(case.inputs["rotary"], dtype=np.float64)
        rotary[..., 0, :] += np.asarray(angles)
        shifted = case.with_inputs(rotary=rotary.astype(case.dtype))
        # Reference: the unshifted problem in float64 (the shift itself is rounded to the dtype).
        y_ref = case.call(sympow.attention, np, dtype="float64", form="parallel")
        y = shifted.call(sympow.attention, xp, form=form)
        # against the float64 truth: the contract's tolerance (the condition term on state-path rows)
        case.assert_matches(y, y_ref, state_path=form != "parallel", what=f"{form} c={angles} {case}")

    check()


def test_normalized_sympow_ignores_scale(xp):
    """With eps = 0 the factor sigma^p cancels between N_i and Z_i."""

    @given_for(
        xp,
        case=attention_cases(max_T=64, kernels=("sympow",), normalize=True, eps=False),
        scales=st.tuples(st.floats(0.05, 4.0), st.floats(0.05, 4.0)),
        form=forms,
    )
    def check(case, scales, form):
        y_ref = case.call(sympow.attention, np, dtype="float64", form="parallel", scale=scales[0])
        y = case.call(sympow.attention, xp, form=form, scale=scales[1])
        case.assert_matches(
            y, y_ref, state_path=form != "parallel", what=f"{form} scales {scales} {case}",
            scale=scales[1],
        )  # fmt: skip

    check()


def test_batch_entries_are_independent(xp):
    """Entry 0 of the batch does not change when every other entry is replaced by wilder data
    (scores about 1e4 times larger, strong gates)."""

    @given_for(xp, case=attention_cases(max_T=32, max_batch_axes=2), form=forms, data=st.data())
    def check(case, form, data):
        batch = data.draw(
            st.lists(st.integers(1, 3), min_size=1, max_size=2).filter(lambda b: int(np.prod(b)) > 1),
            label="batch",
        )
        from sympow.testing import make_inputs

        flags = {key: key in case.inputs for key in ("log_gate", "rotary", "proportions")}
        base = make_inputs(
            batch=tuple(batch),
            T=case.T,
            d=case.d,
            e=case.e,
            seed=case.seed,
            gate=flags["log_gate"],
            rotary=flags["rotary"],
            proportions=flags["proportions"],
            dtype=case.dtype,
        )
        wild = make_inputs(
            batch=tuple(batch),
            T=case.T,
            d=case.d,
            e=case.e,
            seed=case.seed + 1,
            gate=flags["log_gate"],
            gate_min=-30.0,
            rotary=flags["rotary"],
            rotary_scale=50.0,
            proportions=flags["proportions"],
            q_scale=100.0,
        )
        first = (0,) * len(batch)

        def keep_first(a, b):
            out = np.array(b, dtype=np.float64)
            out[first] = a[first]
            if b is wild["k"]:
                out *= 100.0
                out[first] = a[first]
            return out.astype(case.dtype)

        mixed = {}
        for key, value in base.items():
            if isinstance(value, tuple):
                mixed[key] = tuple(keep_first(a, b) for a, b in zip(value, wild[key], strict=True))
            else:
                mixed[key] = keep_first(value, wild[key])
        y_base = to_numpy(case.call(sympow.attention, xp, inputs=base, form=form))
        y_mixed = to_numpy(case.call(sympow.attention, xp, inputs=mixed, form=form))
        assert np.isfinite(y_base[first]).all()
        assert_close(
            y_mixed[first],
            y_base[first],
            base["v"][first],
            dtype_name=case.dtype,
            normalize=case.normalize,
            what=f"{form} batch {batch} {case}",
        )

    check()
