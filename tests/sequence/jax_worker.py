"""``python -m tests.sequence.jax_worker P [case ids]``: the cases of ``cases`` on a mesh of P simulated CPU
devices (XLA_FLAGS is set here, before jax is imported, hence a process of its own). Prints one JSON
object {case id: {"y": error, "state": error, "mu": error, "grad": error}}, each relative to the
single-device call (float64 on one device for the cases of lower precision, whose errors the test
holds to the tolerance table)."""

from __future__ import annotations

import json
import os
import sys

P = int(sys.argv[1])
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={P}"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as Spec  # noqa: E402

import sympow  # noqa: E402
from sympow.spec import sequence  # noqa: E402
from sympow.testing.tolerances import relative_error  # noqa: E402

from .cases import CASES, NAMES, PREFIX, inputs, model_bytes, output_weights, relative  # noqa: E402

jax.config.update("jax_enable_x64", True)
MESH = jax.make_mesh((P,), ("seq",))
TOKENS, ROWS = Spec(None, "seq", None), Spec(None, "seq")
SPECS = (TOKENS, TOKENS, TOKENS, ROWS, TOKENS, ROWS, ROWS)


def attend(args, state, case, **extra):
    q, k, v, g, r, a, b = args
    return sympow.attention(
        q, k, v, log_gate=g, rotary=r, proportions=(a, b), initial_state=state, backend="jax",
        **case.options(), **extra,
    )  # fmt: skip


def loss_of(y, state, weight):
    z = state.unscaled()[1]
    return jnp.sum(y.astype(jnp.float64) * weight) + jnp.sum(z * jnp.cos(jnp.arange(z.shape[-1])))


def run(case, x, weight):
    dtype = getattr(jnp, case.dtype)
    # the inputs rounded to the case's dtype, in float64: the reference of the tolerance table
    whole = [jnp.asarray(x[n][:, PREFIX:]).astype(dtype).astype(jnp.float64) for n in NAMES]
    first = [jnp.asarray(x[n][:, :PREFIX]).astype(dtype).astype(jnp.float64) for n in NAMES]
    state = attend([a.astype(dtype) for a in first], None, case)[1] if case.resume else None
    exact = case.dtype == "float64"
    reference_case = case if exact else type(case)(case.kernel, case.power, case.normalize, form="parallel")
    reference_state = attend(first, None, reference_case)[1] if case.resume else None

    def single(*args):
        return attend(list(args), reference_state, reference_case)

    def member(*args):
        return attend([a.astype(dtype) for a in args], state, case, sequence_group="seq",
                      sequence_exchange=case.exchange)  # fmt: skip

    split = jax.shard_map(member, mesh=MESH, in_specs=SPECS, out_specs=(TOKENS, Spec()))  # check_vma=True
    sharded = [jax.device_put(a, NamedSharding(MESH, s)) for a, s in zip(whole, SPECS, strict=True)]
    argnums = tuple(range(len(NAMES)))

    def evaluate(fn, args):  # (y, state, gradients or None), in one compilation
        if not case.gradients:
            return (*jax.jit(fn)(*args), None)

        def loss(*a):
            y, state = fn(*a)
            return loss_of(y, state, weight), (y, state)

        (_, (y, state)), grads = jax.jit(jax.value_and_grad(loss, argnums, has_aux=True))(*args)
        return y, state, grads

    y1, s1, g1 = evaluate(single, whole)
    with jax.set_mesh(MESH), sequence.traffic() as record:  # traced here: the collectives are counted
        y2, s2, g2 = evaluate(split, sharded)
    result = {
        "bytes": sum(nbytes for _, nbytes in record),
        "model_bytes": model_bytes(case, P, s2.z.shape[-1], traced=True),
        "y": relative_error(y2, y1, whole[2], normalize=case.normalize),
        "state": max(relative(b, np.asarray(a)) for a, b in zip(s1.unscaled(), s2.unscaled(), strict=True)),
        "mu": float(np.max(np.abs(np.asarray(s1.mu) - np.asarray(s2.mu)))),
    }
    if case.gradients:
        result["grad"] = max(relative(b, np.asarray(a)) for a, b in zip(g1, g2, strict=True))
    return result


def poison(x, exchange: str) -> dict[str, bool]:
    """Under jit the values cannot be read: a NaN in k at the last token of member 0's slice makes NaN
    every row from it on, on every member, and the final State, while the rows before it stay finite."""
    case = CASES[0]
    args = [jnp.asarray(x[n][:, PREFIX:]) for n in NAMES]
    cut = args[1].shape[1] // P - 1
    args[1] = args[1].at[:, cut, 0].set(jnp.nan)

    def member(*a):
        return attend(list(a), None, case, sequence_group="seq", sequence_exchange=exchange)

    split = jax.jit(jax.shard_map(member, mesh=MESH, in_specs=SPECS, out_specs=(TOKENS, Spec())))
    with jax.set_mesh(MESH):
        y, state = split(
            *(jax.device_put(a, NamedSharding(MESH, s)) for a, s in zip(args, SPECS, strict=True))
        )
    y = np.asarray(y)
    return {
        "before": bool(np.isfinite(y[:, :cut]).all()), "after": bool(np.isnan(y[:, cut:]).all()),
        "state": bool(all(np.isnan(np.asarray(f)).all() for f in state if f is not None)),
    }  # fmt: skip


def main() -> None:
    wanted = set(sys.argv[2:])
    x, weight = inputs(), jnp.asarray(output_weights())
    results = {case.id: run(case, x, weight) for case in CASES if not wanted or case.id in wanted}
    if P > 1:
        results["poison"] = {exchange: poison(x, exchange) for exchange in ("allgather", "scan")}
    print(json.dumps(results))


if __name__ == "__main__":
    main()
