"""Behaviour no other test pinned down, found by the survivors of benchmarks/mutation_check.py.

- The compensated rotary angle sum (``rotary._compensated_angles``, mutants rotary-float32-angle-sum and
  rotary-two-sum-error-dropped) runs only where the namespace has no float64 (JAX without x64), which no
  other test session has. Forced here with ``float64=False``, it must follow the float64 sum of the same
  float32 increments to a few float32 round-offs at pi, at |mu| ~ 1e6 radians over T = 4096 tokens,
  where a plain float32 sum is off by radians and one without the TwoSum error terms by about 2e-5.
- The chunked form's padding mask (chunked-padding-enters-state): checked with a degree-0 kernel.
- The default state dtype at degrees 4 and 5 (state-dtype-degree-4-float64).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from array_api_compat import array_namespace

import sympow
from sympow.spec.rotary import accumulate_angles
from sympow.testing import assert_close, convert, make_inputs, to_numpy
from sympow.testing.tolerances import angle_error, contract_state_dtype, unit_roundoff

# A few float32 round-offs of an angle in [-pi, pi): what the (hi, lo) scan promises ("about 1e-7").
ANGLE_TOLERANCE = 8 * math.pi * unit_roundoff("float32")  # ~1.5e-6 radians


def large_increments(T: int, half: int, total: float, seed: int) -> np.ndarray:
    """float32 increments [2, T, d/2] summing to about +total (first entry) and -total (second)."""
    rng = np.random.default_rng(seed)
    step = (total / T) * (1.0 + 0.1 * rng.standard_normal((2, T, half)))
    step[1] *= -1.0
    return step.astype(np.float32)


@pytest.mark.parametrize("with_mu0", [False, True], ids=["no-mu0", "mu0"])
def test_compensated_angles_follow_the_float64_sum(xp, with_mu0):
    T, half = 4096, 3
    increments = large_increments(T, half, 1e6, seed=12)
    mu0 = np.random.default_rng(13).uniform(-3.0, 3.0, (2, half)).astype(np.float32) if with_mu0 else None
    exact = np.cumsum(increments.astype(np.float64), axis=-2)
    if mu0 is not None:
        exact = exact + mu0.astype(np.float64)[..., None, :]
    assert np.abs(exact[..., -1, :]).min() > 9e5
    arrays = convert({"w": increments} | ({} if mu0 is None else {"mu0": mu0}), xp, "float32")
    compat = array_namespace(arrays["w"])

    mu, mu_end = accumulate_angles(arrays["w"], arrays.get("mu0"), compat, float64=False)

    assert str(mu.dtype).rsplit(".", 1)[-1] == "float32"
    assert tuple(mu.shape) == (2, T, half) and tuple(mu_end.shape) == (2, half)
    error = angle_error(to_numpy(mu), exact)
    assert error <= ANGLE_TOLERANCE, f"angles off by {error:.3e} rad (tolerance {ANGLE_TOLERANCE:.1e})"
    end = to_numpy(mu_end)
    assert np.all(np.abs(end) <= math.pi + 1e-6), "the final angle is not reduced modulo 2 pi"
    end_error = angle_error(end, exact[..., -1, :])
    assert end_error <= ANGLE_TOLERANCE, f"final angle off by {end_error:.3e} rad"


def test_compensated_and_float64_paths_agree_on_short_sums(xp):
    """On ordinary increments both accumulations give the same angles (to float32 round-off)."""
    rng = np.random.default_rng(14)
    increments = (0.5 * rng.standard_normal((3, 37, 4))).astype(np.float32)
    arrays = convert({"w": increments}, xp, "float32")
    compat = array_namespace(arrays["w"])
    wide, wide_end = accumulate_angles(arrays["w"], None, compat, float64=True)
    narrow, narrow_end = accumulate_angles(arrays["w"], None, compat, float64=False)
    assert angle_error(to_numpy(narrow), to_numpy(wide)) <= ANGLE_TOLERANCE
    assert angle_error(to_numpy(narrow_end), to_numpy(wide_end)) <= ANGLE_TOLERANCE


# The chunked form pads T up to a whole number of chunks with zero vectors. A zero key has no feature
# of degree n >= 1, but a kernel with a degree-0 term (taylor) gives it the constant feature 1: only the
# mask of the padding keeps those tokens out of the state. They come after every real token, so no output
# sees them; only the returned state does.
@pytest.mark.parametrize("gate", [False, True], ids=["no-gate", "gate"])
@pytest.mark.parametrize("power", [1, 2, 3])
def test_chunk_padding_stays_out_of_the_state(gate, power):
    inputs = make_inputs(batch=(2,), T=10, d=4, e=3, seed=21 + power, gate=gate)
    kwargs = dict(
        kernel="taylor", power=power, normalize=False, log_gate=inputs.get("log_gate"), backend="reference"
    )
    _, expected = sympow.attention(
        inputs["q"], inputs["k"], inputs["v"], form="recurrent", return_state=True, **kwargs
    )
    for chunk in (3, 4, 7, 13):  # 10 = 3 * 3 + 1 = 2 * 4 + 2 = 7 + 3; 13 > T: one padded chunk
        _, state = sympow.attention(
            inputs["q"], inputs["k"], inputs["v"], form="chunked", chunk_size=chunk, return_state=True,
            **kwargs,
        )  # fmt: skip
        for name, got, want in zip(("S", "z"), state.unscaled(), expected.unscaled(), strict=True):
            assert_close(got, want, dtype_name="float64", normalize=False, what=f"chunk {chunk}: {name}")


# math.md 9: the default state path is the inputs' accumulation dtype up to degree 4 (float32 for
# float32 inputs) and float64 above. On NumPy only degree >= 6 and the API default p = 2 were checked
# (degree 4 only in the JAX test of the reference backend).
@pytest.mark.parametrize("form", ["parallel", "recurrent", "chunked"])
@pytest.mark.parametrize(("kernel", "power"), [("sympow", 4), ("sympow", 5), ("taylor", 4), ("taylor", 5)])
def test_default_state_dtype_at_the_degree_boundary(form, kernel, power):
    inputs = make_inputs(T=6, d=3, e=2, seed=5, dtype="float32")
    _, state = sympow.attention(
        inputs["q"], inputs["k"], inputs["v"], kernel=kernel, power=power, normalize=False, form=form,
        chunk_size=4, return_state=True, backend="reference",
    )  # fmt: skip
    expected = contract_state_dtype("float32", highest_degree=power)
    assert expected == ("float32" if power <= 4 else "float64")
    for field in (state.S, state.z, state.log_scale):
        assert str(np.asarray(field).dtype) == expected, (kernel, power, form, field.dtype)
