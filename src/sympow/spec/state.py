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
"""

from __future__ import annotations

from typing import Any, NamedTuple


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

    def unscaled(self) -> tuple[Any, Any]:
        """The true sums (S, z) = exp(log_scale) * (S_stored, z_stored); may overflow in float32."""
        from array_api_compat import array_namespace

        xp = array_namespace(self.S)
        factor = xp.exp(self.log_scale)
        return self.S * factor[..., None, None], self.z * factor[..., None]
