"""The running state that one call hands to the next (math.md section 5).

With H = 2 when proportions are in use (cos and sin halves) and H = 1 otherwise, D the feature size of the
kernel and D' = H * D:

    S = exp(log_scale) * S_stored,   S = sum_j W_j phi(k~_j) v_j^T        [..., D', e]
    z = exp(log_scale) * z_stored,   z = sum_j W_j phi(k~_j)              [..., D']
    mu                                accumulated rotary angle             [..., d/2], or None

W_j is the product of the gates after token j up to the end of the processed prefix. The stored sums are
kept at a magnitude of about one and `log_scale` [...] carries their common scale, so that a state whose
true entries are far outside float32's range (even powers of large scores) is still representable.
`mu` is kept reduced modulo 2 pi, in float64 where the namespace has it.

Dtype: S, z and log_scale are held in the call's state dtype (``state_dtype``, math.md 9): by default the
inputs' accumulation dtype up to degree 4 (float32 for 16- and 32-bit inputs), float64 above where the
namespace has it; the same on every backend (the GPU kernels take float32 only). A resumed State of any
dtype, form or backend is cast to the call's state dtype on entry.

Provenance: a State made by ``attention`` records its ``producer``, the feature map (kernel, its degrees
and coefficients) and the number of halves H, in its class: ``state_type(producer)`` is a subclass of
``State`` with that class attribute, so that the record survives JAX's and torch's pytree flattening (a
NamedTuple is rebuilt as ``type(state)(*leaves)``) while the leaves stay arrays that jit and vmap accept.
A call refuses a resumed State whose producer differs from its own (``checks``), even where the sizes
agree; a State built by hand (``State(S, z, mu, log_scale)``) has ``producer = None`` and is checked by
its shapes only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

from .kernel import Kernel


@dataclass(frozen=True)
class Producer:
    """What a State's sums mean: the sums of phi(k~) v^T for this feature map and number of halves H."""

    kernel: Kernel
    halves: int

    def __str__(self) -> str:
        weighting = ", with proportions (H = 2)" if self.halves == 2 else ""
        return f"{self.kernel.description}{weighting}"


FIELD_TAILS = {"S": 2, "z": 1, "mu": 1, "log_scale": 0}  # each field's axes after the batch axes


class State(NamedTuple):
    """Immutable record of the running sums; a NamedTuple, hence a JAX pytree.

    Fields: ``S`` [..., D', e], ``z`` [..., D'], ``mu`` [..., d/2] or ``None`` when no rotary has been
    applied, ``log_scale`` [...] (the true sums are ``exp(log_scale)`` times the stored ones).
    A state from any form of a backend resumes in any other form.
    """

    S: Any
    z: Any
    mu: Any
    log_scale: Any

    producer = None  # a class attribute (not a field): see ``state_type``

    def __reduce__(self) -> tuple[Any, ...]:
        return _restore, (self.producer, tuple(self))

    def unscaled(self) -> tuple[Any, Any]:
        """The true sums (S, z) = exp(log_scale) * (S_stored, z_stored); may overflow in float32."""
        from array_api_compat import array_namespace

        xp = array_namespace(self.S)
        factor = xp.exp(self.log_scale)
        return self.S * factor[..., None, None], self.z * factor[..., None]


_STATE_TYPES: dict[Producer, type[State]] = {}


def state_type(producer: Producer | None) -> type[State]:
    """The State class that records ``producer`` (``State`` itself for None); one class per producer,
    made at its first use and then looked up (a plain dict: torch.compile traces the lookup, not the
    making of a class)."""
    if producer is None:
        return State
    kind = _STATE_TYPES.get(producer)
    if kind is None:
        kind = type("State", (State,), {"__slots__": (), "producer": producer, "__module__": __name__})
        _STATE_TYPES[producer] = kind
    return kind


def _restore(producer: Producer | None, fields: tuple[Any, ...]) -> State:
    """Unpickle a State with its producer."""
    return state_type(producer)(*fields)
