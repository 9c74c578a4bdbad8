"""One training step of a tiny model whose attention runs sequence-parallel over 4 (simulated) devices.

The model projects a sequence x [T, width] to q, k, v of 2 heads with one learned matrix W, runs
``sympow.attention`` and scores the output against a target (mean squared error). The sequence-parallel
step runs inside ``jax.shard_map`` over the mesh axis "seq": each device holds T / 4 consecutive tokens of
x and of the target, W is replicated, and ``sequence_group="seq"`` makes the four slices one sequence.
Each device's loss is its slice's sum, and ``lax.psum`` over "seq" makes the whole sequence's loss. Then
``jax.value_and_grad`` and one SGD update; the loss, gradient and updated W are compared with the same
step on one device (no ``sequence_group``). See docs/sequence.md.

    python examples/sequence_jax.py
"""

from __future__ import annotations

import os

# simulated host devices: must be set before jax is imported
os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import NamedSharding, PartitionSpec

import sympow

DEVICES, T, WIDTH, HEADS, D_HEAD = 4, 512, 16, 2, 8
LEARNING_RATE = 0.1


def project(W: jax.Array, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """q, k, v [HEADS, T_slice, D_HEAD] of x [T_slice, WIDTH] (W [WIDTH, 3 HEADS D_HEAD])."""
    qkv = jnp.reshape(x @ W, (x.shape[0], 3, HEADS, D_HEAD))
    q, k, v = (jnp.moveaxis(qkv[:, i], 0, 1) for i in range(3))
    return q, k, v


def slice_loss(W: jax.Array, x: jax.Array, target: jax.Array, **group: str) -> jax.Array:
    """The sum of squared errors over the tokens of x (a slice, or the whole sequence)."""
    y = sympow.attention(*project(W, x), power=2, form="chunked", chunk_size=32, **group)  # [HEADS, T, D]
    return jnp.sum((y - target) ** 2)


def single_device_loss(W: jax.Array, x: jax.Array, target: jax.Array) -> jax.Array:
    return slice_loss(W, x, target) / target.size


def main() -> None:
    mesh = jax.make_mesh((DEVICES,), ("seq",))
    tokens = PartitionSpec("seq", None)  # x [T, WIDTH]: the tokens split over "seq"
    heads_tokens = PartitionSpec(None, "seq", None)  # target [HEADS, T, D_HEAD]
    replicated = PartitionSpec()  # W, and the loss

    def member_loss(W: jax.Array, x: jax.Array, target: jax.Array) -> jax.Array:
        # this device's slice: x [T/4, WIDTH], target [HEADS, T/4, D_HEAD]; the whole sequence's mean
        return lax.psum(slice_loss(W, x, target, sequence_group="seq"), "seq") / (HEADS * T * D_HEAD)

    parallel_loss = jax.shard_map(
        member_loss, mesh=mesh, in_specs=(replicated, tokens, heads_tokens), out_specs=replicated
    )

    rng = np.random.default_rng(0)
    W = jnp.asarray(rng.standard_normal((WIDTH, 3 * HEADS * D_HEAD)) / np.sqrt(WIDTH), dtype=jnp.float32)
    x = jnp.asarray(rng.standard_normal((T, WIDTH)), dtype=jnp.float32)
    target = jnp.asarray(rng.standard_normal((HEADS, T, D_HEAD)), dtype=jnp.float32)

    # the sequence-parallel step: inputs laid out over the mesh, gradients under the mesh
    W_sharded = jax.device_put(W, NamedSharding(mesh, replicated))
    x_sharded = jax.device_put(x, NamedSharding(mesh, tokens))
    target_sharded = jax.device_put(target, NamedSharding(mesh, heads_tokens))
    with jax.set_mesh(mesh):
        loss, grad = jax.jit(jax.value_and_grad(parallel_loss))(W_sharded, x_sharded, target_sharded)
    W_new = W_sharded - LEARNING_RATE * grad

    # the same step on one device
    loss_1, grad_1 = jax.jit(jax.value_and_grad(single_device_loss))(W, x, target)
    W_new_1 = W - LEARNING_RATE * grad_1

    def relative(a: jax.Array, b: jax.Array) -> float:
        return float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))

    print(f"{DEVICES} devices, T = {T} ({T // DEVICES} tokens each), {HEADS} heads of d = e = {D_HEAD}")
    print(f"loss: sequence-parallel {float(loss):.7f}, one device {float(loss_1):.7f}")
    errors = {
        "loss": relative(loss, loss_1),
        "gradient": relative(grad, grad_1),
        "updated W": relative(W_new, W_new_1),
    }
    print("relative differences: " + ", ".join(f"{name} {err:.1e}" for name, err in errors.items()))
    tolerance = 1e-5  # float32
    if max(errors.values()) > tolerance:
        raise SystemExit(f"FAILED: the sequence-parallel step differs from one device's (> {tolerance})")
    print("OK: the sequence-parallel loss, gradient and SGD update equal the single-device ones")


if __name__ == "__main__":
    main()
