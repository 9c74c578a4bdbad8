"""A JAX mesh axis as a sequence group (``spec.sequence.Group``), inside ``jax.shard_map``.

The collectives are JAX's own, so ``jax.grad`` differentiates through them (the transpose of
``all_gather`` is a reduce-scatter, that of ``ppermute`` the reverse permutation). The all-gather's result
is typed as the same on every member, so that the whole sequence's State leaves
``shard_map(check_vma=True)`` with ``out_specs=P()``.
"""

from __future__ import annotations

import math
from typing import Any

import jax.numpy as jnp
from jax import lax

from ..spec.sequence import count


class AxisGroup:
    """The members along the mesh axis ``name``: size P = the axis size, rank = ``lax.axis_index``."""

    eager_backward = False  # one traced program: its transposed collectives are in one order already

    def __init__(self, name: str) -> None:
        try:
            self.size = lax.axis_size(name)
            self.rank = lax.axis_index(name)
        except NameError as error:
            raise ValueError(
                f"sequence_group={name!r} is not a bound mesh axis: call attention inside jax.shard_map "
                f"over a mesh with an axis named {name!r} ({error})"
            ) from None
        self.name = name

    def signatures(self, signature: list[int]) -> None:
        """None: members of a mesh axis have equal shapes by construction (shard_map splits evenly), and
        their values cannot be read while tracing."""
        return None

    def all_gather(self, x: Any) -> Any:
        count("all_gather", self.size, math.prod(x.shape) * x.dtype.itemsize)
        return lax.all_gather(x, self.name, to="invarying")  # the same on every member

    def shift(self, x: Any, s: int) -> Any:
        count("shift", self.size, math.prod(x.shape) * x.dtype.itemsize, s)
        return lax.ppermute(x, self.name, [(i, i + s) for i in range(self.size - s)])

    def last(self, x: Any) -> Any:
        count("last", self.size, math.prod(x.shape) * x.dtype.itemsize)
        return lax.psum(jnp.where(self.rank == self.size - 1, x, jnp.zeros_like(x)), self.name)
