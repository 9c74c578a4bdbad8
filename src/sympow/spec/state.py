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

Dtype: the reference keeps S, z and log_scale in its accumulation dtype, float64 wherever the namespace has
it (also for float32 or 16-bit inputs: see spec/prepare.py), float32 otherwise; the native torch and JAX
backends keep float64 for float32 and float64 inputs (JAX: when x64 is enabled) and float32 for 16-bit
inputs; the GPU kernels keep float32. Any state is accepted by any form and backend and cast on entry.
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
