"""A State records what produced it (kernel, power, weighting) and a call refuses another's State.

Issue 12, item 2: before the record, a State was accepted whenever its sizes matched, and silently computed
something else. The mismatches below all have matching sizes.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest

import sympow
from sympow.spec.kernel import make_kernel
from sympow.spec.state import Producer, State
from sympow.testing import convert, make_inputs

pytestmark = pytest.mark.usefixtures("spec_backend")

# (producer's options, consumer's options, d): the feature sizes D' agree, the maths does not
SAME_SIZE_MISMATCHES = [
    pytest.param(dict(kernel="relu"), dict(kernel="identity", normalize=False), 4, id="relu-into-identity"),
    pytest.param(dict(kernel="sympow", power=2), dict(kernel="taylor", power=1, normalize=False), 2,
                 id="sympow2-into-taylor1"),  # D = 3 for both at d = 2
    pytest.param(dict(kernel="sympow", power=2, proportions=True),
                 dict(kernel="sympow", power=3, normalize=False), 4,
                 id="sympow2-proportions-into-sympow3"),  # D' = 2 * 10 = 20 = C(6, 3)
]  # fmt: skip


def _call(xp, d, options, *, seed, initial_state=None, return_state=False):
    options = dict(options)
    inputs = convert(make_inputs(T=5, d=d, e=3, seed=seed, proportions=options.pop("proportions", False)), xp)
    return sympow.attention(
        inputs["q"], inputs["k"], inputs["v"], proportions=inputs.get("proportions"),
        initial_state=initial_state, return_state=return_state, **options,
    )  # fmt: skip


@pytest.mark.parametrize(("made_by", "used_by", "d"), SAME_SIZE_MISMATCHES)
def test_a_state_of_another_kernel_is_refused(xp, made_by, used_by, d):
    _, state = _call(xp, d, made_by, seed=0, return_state=True)
    with pytest.raises(ValueError, match="initial_state was produced by") as info:
        _call(xp, d, used_by, seed=1, initial_state=state)
    kernel = made_by["kernel"]
    assert f"kernel={kernel!r}" in str(info.value)


@pytest.mark.parametrize(("made_by", "used_by", "d"), SAME_SIZE_MISMATCHES)
def test_a_hand_built_state_is_checked_by_shape_only(xp, made_by, used_by, d):
    """``State(S, z, mu, log_scale)`` records no producer: the sizes are all that can be checked."""
    _, state = _call(xp, d, made_by, seed=0, return_state=True)
    bare = State(*state)
    assert bare.producer is None
    y = _call(xp, d, used_by, seed=1, initial_state=bare)
    assert y.shape == (5, 3)


def test_the_record_names_kernel_power_and_weighting(np_xp):
    _, state = _call(np_xp, 4, dict(kernel="sympow", power=4, proportions=True), seed=0, return_state=True)
    assert state.producer == Producer(make_kernel("sympow", 4), 2)
    assert isinstance(state, State)
    assert str(state.producer) == "kernel='sympow', power=4, with proportions (H = 2)"
    resumed = _call(np_xp, 4, dict(kernel="sympow", power=4, proportions=True), seed=1, initial_state=state,
                    return_state=True)[1]  # fmt: skip
    assert type(resumed) is type(state)


def test_pickle_and_replace_keep_the_record(np_xp):
    _, state = _call(np_xp, 4, dict(kernel="taylor", power=2), seed=0, return_state=True)
    for copy in (pickle.loads(pickle.dumps(state)), state._replace(mu=None)):
        assert copy.producer == state.producer
        np.testing.assert_array_equal(copy.S, state.S)


def test_jax_jit_and_vmap_keep_the_record():
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp

    options = dict(kernel="sympow", power=2)
    _, state = _call(jnp, 4, options, seed=0, return_state=True)
    leaves = jax.tree_util.tree_leaves(state)
    assert len(leaves) == 3 and all(isinstance(x, jax.Array) for x in leaves)  # S, z, log_scale; mu None
    inputs = convert(make_inputs(T=5, d=4, e=3, seed=1), jnp)

    @jax.jit
    def resume(q, initial):
        return sympow.attention(
            q, inputs["k"], inputs["v"], initial_state=initial, return_state=True, **options
        )

    y, after = resume(inputs["q"], state)
    assert after.producer == state.producer
    y_eager, _ = sympow.attention(inputs["q"], inputs["k"], inputs["v"], initial_state=state,
                                  return_state=True, **options)  # fmt: skip
    np.testing.assert_allclose(np.asarray(y), np.asarray(y_eager), rtol=1e-12, atol=1e-12)
    stacked = jax.tree_util.tree_map(lambda x: jnp.stack([x, x]), state)
    assert jax.vmap(lambda s: s)(stacked).producer == state.producer
    with pytest.raises(ValueError, match="initial_state was produced by"):
        jax.jit(lambda q, s: sympow.attention(q, inputs["k"], inputs["v"], kernel="taylor", power=2,
                                              initial_state=s))(inputs["q"], state)  # fmt: skip


# Dynamo warns when it traces through array_api_compat's own lru_cache'd type checks (``device``); they hold
# no tensor, so tracing them is sound (as in tests/backends/test_torch_native.py).
@pytest.mark.filterwarnings("ignore:Dynamo detected a call to a `functools.lru_cache`")
def test_torch_pytree_and_compile_keep_the_record():
    torch = pytest.importorskip("torch")
    from torch.utils import _pytree

    from sympow.backends import torch_native
    from sympow.spec import validate

    _, state = _call(torch, 4, dict(kernel="sympow", power=2), seed=0, return_state=True)
    leaves, spec = _pytree.tree_flatten(state)
    assert _pytree.tree_unflatten(leaves, spec).producer == state.producer
    inputs = convert(make_inputs(T=5, d=4, e=3, seed=1), torch)
    request = validate(
        inputs["q"], inputs["k"], inputs["v"], kernel="sympow", power=2, scale=None, log_gate=None,
        proportions=None, rotary=None, rotary_layout="half", normalize=True, eps=0.0, form="chunked",
        chunk_size=2, initial_state=state, return_state=True,
    )  # fmt: skip

    def run(q, initial):
        arrays = {**request.arrays(), "q": q, "initial_state": initial}
        return torch_native.forward(request.with_arrays(arrays), "chunked")

    torch._dynamo.reset()
    compiled = torch.compile(run, fullgraph=True, dynamic=False, backend="aot_eager")
    (y, after), (y_eager, _) = compiled(inputs["q"], state), run(inputs["q"], state)
    assert after.producer == state.producer
    torch.testing.assert_close(y, y_eager)
