"""Packed sequences under autograd, jax.grad, jax.jit (traced offsets) and torch.compile, and their
rotary angles without float64."""

from __future__ import annotations

import pytest

import sympow
from sympow.testing import make_inputs, tolerance
from sympow.testing.packed import per_sequence
from tests.without_x64 import run_without_x64

FORMS = ("parallel", "recurrent", "chunked")
KERNELS = (("sympow", 2), ("taylor", 2), ("relu", 2))
OFFSETS = [0, 3, 3, 4, 11, 13]  # an empty and a one-token sequence, boundaries off chunk edges
TOL = tolerance("float64")


def case_inputs(kernel):
    inputs = make_inputs(batch=(2,), T=OFFSETS[-1], d=4, e=3, seed=3, gate=True, rotary=True,
                         proportions=True)  # fmt: skip
    start = make_inputs(batch=(2,), T=2 * (len(OFFSETS) - 1), d=4, e=3, seed=4, gate=True, rotary=True,
                        proportions=True)  # fmt: skip
    prelude = list(range(0, start["q"].shape[-2] + 1, 2))
    _, initial = per_sequence(sympow.attention, start, prelude, kernel=kernel[0], power=kernel[1],
                              return_state=True, backend="reference")  # fmt: skip
    return inputs, initial


def loss_of(y, state, xp):
    S, z = state.unscaled()
    return xp.sum(y**2) + 0.01 * xp.sum(S) + 0.1 * xp.sum(z) + xp.sum(xp.sin(state.mu))


@pytest.mark.parametrize("kernel", KERNELS, ids=[k[0] for k in KERNELS])
@pytest.mark.parametrize("form", FORMS)
def test_torch_gradients_equal_separate_calls(form, kernel):
    torch = pytest.importorskip("torch")
    inputs, initial = case_inputs(kernel)
    names = ("q", "k", "v", "log_gate", "rotary")
    leaves = {n: torch.tensor(inputs[n], requires_grad=True) for n in names}
    leaves["a"], leaves["b"] = (torch.tensor(x, requires_grad=True) for x in inputs["proportions"])
    state0 = type(initial)(*(torch.tensor(x, requires_grad=True) for x in initial))

    def arrays():
        return {**{n: leaves[n] for n in names}, "proportions": (leaves["a"], leaves["b"])}

    options = {"kernel": kernel[0], "power": kernel[1], "return_state": True, "backend": "torch"}
    packed = sympow.attention(**arrays(), form=form, chunk_size=4, cu_seqlens=OFFSETS, initial_state=state0,
                              **options)  # fmt: skip
    looped = per_sequence(sympow.attention, arrays(), OFFSETS, initial_state=state0, form="parallel",
                          **options)  # fmt: skip
    wrt = [*leaves.values(), state0.S, state0.z, state0.mu, state0.log_scale]
    grads = torch.autograd.grad(loss_of(*packed, torch), wrt)
    expected = torch.autograd.grad(loss_of(*looped, torch), wrt)
    for got, want in zip(grads, expected, strict=True):
        assert torch.isfinite(got).all()
        scale = max(1.0, float(want.abs().max()))
        assert float((got - want).abs().max()) <= 10 * TOL * scale


def jax_case(jnp):
    """The sympow case's inputs and initial States as JAX arrays."""
    inputs, initial = case_inputs(KERNELS[0])
    arrays = {n: jnp.asarray(inputs[n]) for n in ("q", "k", "v", "log_gate", "rotary")}
    arrays["proportions"] = tuple(jnp.asarray(x) for x in inputs["proportions"])
    return arrays, type(initial)(*(jnp.asarray(x) for x in initial))


@pytest.mark.parametrize("form", FORMS)
def test_jax_gradients_equal_separate_calls(form):
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    leaves, state0 = jax_case(jnp)
    options = {"return_state": True, "backend": "jax"}

    def packed(arrays, state):
        return loss_of(*sympow.attention(**arrays, form=form, chunk_size=4, cu_seqlens=OFFSETS,
                                         initial_state=state, **options), jnp)  # fmt: skip

    def looped(arrays, state):
        return loss_of(*per_sequence(sympow.attention, arrays, OFFSETS, initial_state=state, form="parallel",
                                     **options), jnp)  # fmt: skip

    grads = jax.tree.leaves(jax.grad(packed, argnums=(0, 1))(leaves, state0))
    expected = jax.tree.leaves(jax.grad(looped, argnums=(0, 1))(leaves, state0))
    for got, want in zip(grads, expected, strict=True):
        assert bool(jnp.all(jnp.isfinite(got)))
        assert float(jnp.max(jnp.abs(got - want))) <= 10 * TOL * max(1.0, float(jnp.max(jnp.abs(want))))


@pytest.mark.parametrize("form", (*FORMS, "auto"))
def test_jit_with_traced_offsets(form):
    """Offsets traced by jax.jit (their values unknown when traced): the same result as eager, and bad
    offsets give NaN everywhere instead of a wrong answer."""
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    arrays, state0 = jax_case(jnp)

    def call(offsets):
        return sympow.attention(**arrays, form=form, chunk_size=4, cu_seqlens=offsets, initial_state=state0,
                                return_state=True, backend="jax")  # fmt: skip

    y, state = call(OFFSETS)
    y_jit, state_jit = jax.jit(call)(jnp.asarray(OFFSETS))
    assert float(jnp.max(jnp.abs(y - y_jit))) <= TOL * 10
    for a, b in zip(state.unscaled(), state_jit.unscaled(), strict=True):
        assert float(jnp.max(jnp.abs(a - b))) <= TOL * 10 * max(1.0, float(jnp.max(jnp.abs(a))))
    bad = [0, 4, 3, 4, 11, 13]
    y_bad, state_bad = jax.jit(call)(jnp.asarray(bad))
    assert bool(jnp.all(jnp.isnan(y_bad))) and bool(jnp.all(jnp.isnan(state_bad.S)))


@pytest.mark.filterwarnings("ignore:Dynamo detected a call to a `functools.lru_cache`")
@pytest.mark.parametrize("form", FORMS)
def test_torch_compile(form):
    """torch.compile(fullgraph=True) of everything after validation, the offsets a traced input: the
    same result as eager (as tests/backends/test_torch_native.py does for unpacked calls)."""
    torch = pytest.importorskip("torch")
    from sympow.backends import torch_native
    from sympow.spec import validate

    inputs, initial = case_inputs(KERNELS[0])
    arrays = {n: torch.tensor(inputs[n]) for n in ("q", "k", "v", "log_gate", "rotary")}
    arrays["proportions"] = tuple(torch.tensor(x) for x in inputs["proportions"])
    arrays["initial_state"] = type(initial)(*(torch.tensor(x) for x in initial))
    arrays["cu_seqlens"] = torch.tensor(OFFSETS)
    request = validate(**arrays, kernel="sympow", power=2, scale=None, rotary_layout="half", normalize=True,
                       eps=0.0, form=form, chunk_size=4, return_state=True)  # fmt: skip

    def run(arrays):
        return torch_native.forward(request.with_arrays(arrays), form)

    torch._dynamo.reset()
    compiled = torch.compile(run, fullgraph=True, dynamic=False, backend="aot_eager")
    given = request.arrays()
    (y, state), (y_eager, state_eager) = compiled(given), run(given)
    torch.testing.assert_close(y, y_eager)
    torch.testing.assert_close(state.S, state_eager.S)


def test_rotary_restarts_without_float64():
    """JAX without x64: the compensated angle scan restarts at every boundary, and each sequence's phase
    after 4096 tokens of increments near 1e4 radians stays that of its own float64 sum."""
    run_without_x64(
        """
import numpy as np, jax.numpy as jnp
from sympow.spec.rotary import restarted_angles
rng = np.random.default_rng(0)
T, half = 4096, 2
w = (rng.random((T, half)) * 2e4).astype(np.float32)
offsets = [0, 5, 1000, 1000, 3001, T]
starts = np.zeros(T, bool); starts[[o for o in offsets[:-1] if o < T]] = True
entering = np.where(starts[:, None], rng.random((T, half)) * 6, 0).astype(np.float32)
mu = np.asarray(restarted_angles(jnp.asarray(w), jnp.asarray(entering), jnp.asarray(starts), jnp))
worst = 0.0
for lo, hi in zip(offsets[:-1], offsets[1:]):
    if hi == lo:
        continue
    exact = np.cumsum(w[lo:hi].astype(np.float64), axis=0) + entering[lo].astype(np.float64)
    worst = max(worst, np.abs(np.angle(np.exp(1j * (mu[lo:hi] - exact)))).max())
assert worst < 1e-5, worst
print("ok")
"""
    )
