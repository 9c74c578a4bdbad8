"""Generation loops: prefill a prompt in one call, then decode one token at a time from its State.

Two recipes, each compiled once with the State as the loop's carry, each checked against one call over
prompt and new tokens:

- PyTorch: ``torch.compile(step, fullgraph=True)`` of one decoding step (validation, the backend's choice
  and the arithmetic in one graph), called in a Python loop. Tokens are passed as tensors, so the first
  compilation serves every step.
- JAX: ``jax.jit`` of a ``lax.scan`` over the new tokens, the State as the scan's carry.

Here the "model" is fixed random q, k, v and gates: in a language model each step's q_t, k_t, v_t, g_t come
from the token just sampled (see ``sympow.nn``, whose layers decode through the same call).

    python examples/decode.py
"""

from __future__ import annotations

import numpy as np

import sympow
from sympow.testing import convert, make_inputs

HEADS, D_HEAD, PROMPT, NEW = 4, 64, 32, 16


def inputs(library: str) -> dict:
    raw = make_inputs(batch=(1, HEADS), T=PROMPT + NEW, d=D_HEAD, e=D_HEAD, gate=True, gate_min=-0.1, seed=0)
    return convert(raw, library, "float32")


def torch_recipe() -> float:
    import torch

    x = inputs("torch")
    q, k, v, g = x["q"], x["k"], x["v"], x["log_gate"]

    def step(state, q_t, k_t, v_t, g_t):  # q_t, k_t [1, H, 1, d], v_t [1, H, 1, e], g_t [1, H, 1]
        return sympow.attention(q_t, k_t, v_t, log_gate=g_t, initial_state=state, return_state=True)

    _, state = sympow.attention(q[..., :PROMPT, :], k[..., :PROMPT, :], v[..., :PROMPT, :],
                                log_gate=g[..., :PROMPT], return_state=True)  # fmt: skip
    compiled = torch.compile(step, fullgraph=True)
    outputs = []
    for t in range(PROMPT, PROMPT + NEW):
        token = slice(t, t + 1)
        y, state = compiled(state, q[..., token, :], k[..., token, :], v[..., token, :], g[..., token])
        outputs.append(y)
    whole = sympow.attention(q, k, v, log_gate=g)[..., PROMPT:, :]
    return float((torch.cat(outputs, dim=-2) - whole).abs().max())


def jax_recipe() -> float:
    import jax
    import jax.numpy as jnp

    x = inputs("jax")
    q, k, v, g = x["q"], x["k"], x["v"], x["log_gate"]

    def step(state, token):  # one token of each input, without its T axis
        q_t, k_t, v_t, g_t = token
        y, state = sympow.attention(
            q_t[..., None, :], k_t[..., None, :], v_t[..., None, :], log_gate=g_t[..., None],
            initial_state=state, return_state=True,
        )  # fmt: skip
        return state, y[..., 0, :]

    _, state = sympow.attention(q[..., :PROMPT, :], k[..., :PROMPT, :], v[..., :PROMPT, :],
                                log_gate=g[..., :PROMPT], return_state=True)  # fmt: skip
    # the new tokens, token axis first: what lax.scan runs along
    tokens = (
        *(jnp.moveaxis(a[..., PROMPT:, :], -2, 0) for a in (q, k, v)),
        jnp.moveaxis(g[..., PROMPT:], -1, 0),
    )
    generate = jax.jit(lambda state, tokens: jax.lax.scan(step, state, tokens))
    state, ys = generate(state, tokens)
    whole = sympow.attention(q, k, v, log_gate=g)[..., PROMPT:, :]
    return float(jnp.max(jnp.abs(jnp.moveaxis(ys, 0, -2) - whole)))


if __name__ == "__main__":
    for name, recipe in (("torch.compile", torch_recipe), ("jax.jit + lax.scan", jax_recipe)):
        error = recipe()
        print(f"{name}: {NEW} decoded tokens, max |decoded - one call| = {error:.1e}")
        assert np.isfinite(error) and error < 1e-4
