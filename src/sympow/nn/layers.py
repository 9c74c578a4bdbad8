r"""The seeds' attention layers (math.md sections 1 to 3), each one call of the public API per forward.

    SympowAttention      sympow p, optional gates g_t = logsigmoid(c + w_g . x_t) per head and rotary
                         "fixed" (theta_m = base^(-2m/d)) or "conformal" (beta_t theta, beta_t =
                         1 + tanh(w_r . x_t), theta_m = 2 pi / N^(2m/d)): conformal-sympow is
                         SympowAttention(..., gating=True, rotary="conformal")
    LeaPformerAttention  relu features re-weighted by cos(pi/2 (a_i - b_j)), a and b from a compact
                         network on each token's own q and k (``sympow.leapformer``)
    BasedAttention       taylor p = 2 on a small feature dimension after a short causal convolution
                         (``sympow.based``)
    ReBasedAttention     sympow p = 2 on gamma * LN(.) + beta of q and k, gamma and beta shared by the
                         heads (``sympow.rebased``), after the same short convolution

Every layer takes x [B, T, hidden] and returns y [B, T, hidden] in x's dtype (float32, bfloat16 and
float64 all work; half-precision inputs accumulate in float32 inside ``attention``), on x's device.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .. import variants
from ..api import attention
from .common import AttentionLayer

__all__ = ["BasedAttention", "LeaPformerAttention", "ReBasedAttention", "SympowAttention"]

ROTARY = ("none", "fixed", "conformal")


def _angle_dtype(x: torch.Tensor) -> torch.dtype:
    """Rotary increments in float64 where the device has it (math.md 7), else float32."""
    return torch.float32 if x.device.type == "mps" else torch.float64


class SympowAttention(AttentionLayer):
    r"""Symmetric power attention, optionally gated and rotated: conformal-sympow (Kumar et al., 2025,
    "Conformal transformations for symmetric power transformers") with ``gating=True,
    rotary="conformal"``.

    Per head and token t, with x_t the layer's input:

        g_t    = logsigmoid(c + w_g . x_t)                    (gating; c = ``gate_bias``, about 6.9, so
                                                               the first gates are about 0.999)
        w_t    = theta,         theta_m = base^(-2m/d)        (rotary="fixed", RoPE)
        w_t    = beta_t theta,  beta_t = 1 + tanh(w_r . x_t),
                                theta_m = 2 pi / N^(2m/d)     (rotary="conformal", N = ``max_length``)

    then ``sympow.attention(q, k, v, kernel="sympow", power=p, log_gate=g, rotary=w)``. w_g and w_r start
    at zero, so an untrained layer is sympow with constant gates sigmoid(c) and the fixed frequencies;
    the projections keep PyTorch's ``Linear`` initialisation. ``power`` must be even (normalised output).

    Shapes: x [B, T, hidden]; q, k [B, H, T, head_dim]; v [B, H, T, value_dim]; y [B, T, hidden]. The
    ``LayerState`` holds S [B, H, C(head_dim + p - 1, p), value_dim] and the accumulated angle mu.
    """

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        *,
        power: int = 2,
        gating: bool = False,
        rotary: str = "none",
        head_dim: int | None = None,
        value_dim: int | None = None,
        gate_bias: float = 6.9,
        rotary_base: float = 10000.0,
        max_length: int = 4096,
    ) -> None:
        head_dim = hidden_size // num_heads if head_dim is None else head_dim
        value_dim = head_dim if value_dim is None else value_dim
        super().__init__(hidden_size, num_heads, query_dim=head_dim, value_dim=value_dim)
        if isinstance(power, bool) or not isinstance(power, int) or power < 2 or power % 2:
            raise ValueError(f"power must be an even int >= 2 (normalised sympow), got {power!r}")
        if rotary not in ROTARY:
            raise ValueError(f"rotary must be one of {ROTARY}, got {rotary!r}")
        if rotary != "none" and head_dim % 2:
            raise ValueError(f"rotary needs an even head_dim (rotary pairs), got {head_dim}")
        self.power, self.gating, self.rotary, self.gate_bias = power, bool(gating), rotary, float(gate_bias)
        self.gate_proj = nn.Linear(hidden_size, num_heads, bias=False) if gating else None
        self.rotary_proj = nn.Linear(hidden_size, num_heads, bias=False) if rotary == "conformal" else None
        for proj in (self.gate_proj, self.rotary_proj):
            if proj is not None:
                nn.init.zeros_(proj.weight)
        if rotary == "fixed":
            theta = [rotary_base ** (-2.0 * m / head_dim) for m in range(head_dim // 2)]
        elif rotary == "conformal":
            theta = variants.conformal_frequencies(head_dim, max_length)
        else:
            theta = []
        self.register_buffer("theta", torch.tensor(theta, dtype=torch.float64), persistent=False)

    def attend(self, q, k, v, x, initial_state, return_state, options):
        log_gate = None
        if self.gate_proj is not None:
            work = torch.float64 if x.dtype == torch.float64 else torch.float32
            logits = self.per_head(self.gate_proj(x)).to(work)
            log_gate = nn.functional.logsigmoid(logits + self.gate_bias)
        increments = None
        if self.rotary != "none":
            theta = self.theta.to(_angle_dtype(x))
            if self.rotary_proj is None:
                increments = theta.expand(q.shape[-2], theta.shape[0])
            else:
                beta = 1.0 + torch.tanh(self.per_head(self.rotary_proj(x)).to(theta.dtype))
                increments = beta[..., None] * theta
        return attention(
            q, k, v, kernel="sympow", power=self.power, log_gate=log_gate, rotary=increments,
            initial_state=initial_state, return_state=return_state, **options,
        )  # fmt: skip


class LeaPformerAttention(AttentionLayer):
    r"""LeaPformer (Agostinelli et al., ICML 2024, "LeaPformer: enabling linear transformers for
    autoregressive and simultaneous tasks via learned proportions"): relu linear attention re-weighted by
    cos(pi/2 (a_i - b_j)), the proportions from a compact module on each token's own query and key:

        a_i = sigmoid(relu(relu(sigma q_i) W1q + b1q) W2q + b2q),   b_j = the same on relu(k_j) with W*k
        y_i = sum_j <q'_i, k'_j> cos(pi/2 (a_i - b_j)) v_j / max(Z_i, floor)   (``sympow.leapformer``)

    with q' = sigma^{1/2} relu(q), sigma = head_dim^-1/2. ``denominator_floor`` (None: no floor; 0.1 in
    LeaPformer's code) floors the normaliser. The proportion networks have ``proportion_hidden`` units
    (default head_dim) and PyTorch's ``Linear`` initialisation, one for queries and one for keys.
    ``conv_size`` > 1 adds the short causal convolution of ``BasedAttention`` before the projections
    (none by default, as in LeaPformer). ``learned_proportions=False`` is the plain relu linear
    attention it improves on (the baseline of the experiments): no networks, w_ij = 1,
    ``sympow.attention(kernel="relu")``, and no floor.
    """

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        *,
        head_dim: int | None = None,
        value_dim: int | None = None,
        proportion_hidden: int | None = None,
        denominator_floor: float | None = None,
        learned_proportions: bool = True,
        conv_size: int = 0,
    ) -> None:
        head_dim = hidden_size // num_heads if head_dim is None else head_dim
        value_dim = head_dim if value_dim is None else value_dim
        super().__init__(hidden_size, num_heads, query_dim=head_dim, value_dim=value_dim,
                         conv_size=conv_size)  # fmt: skip
        hidden = head_dim if proportion_hidden is None else proportion_hidden
        if learned_proportions:
            self.query_net = nn.ModuleList([nn.Linear(head_dim, hidden), nn.Linear(hidden, 1)])
            self.key_net = nn.ModuleList([nn.Linear(head_dim, hidden), nn.Linear(hidden, 1)])
        elif denominator_floor is not None:
            raise ValueError(
                "denominator_floor needs learned_proportions=True, got learned_proportions=False"
            )
        else:
            self.query_net = self.key_net = None
        self.denominator_floor = denominator_floor

    @staticmethod
    def _net(net: nn.ModuleList) -> tuple[torch.Tensor, ...]:
        """(W1 [d, h], b1 [h], W2 [h, 1], b2 [1]) of ``sympow.variants.ProportionNet``."""
        first, second = net
        return first.weight.T, first.bias, second.weight.T, second.bias

    def attend(self, q, k, v, x, initial_state, return_state, options):
        if self.query_net is None:  # plain relu linear attention
            return attention(q, k, v, kernel="relu", initial_state=initial_state, return_state=return_state,
                             **options)  # fmt: skip
        return variants.leapformer(
            q, k, v, proportion_net=(self._net(self.query_net), self._net(self.key_net)),
            denominator_floor=self.denominator_floor, initial_state=initial_state,
            return_state=return_state, **options,
        )  # fmt: skip


class BasedAttention(AttentionLayer):
    r"""Based (Arora et al., 2024): the second-order Taylor kernel on a small feature dimension,

        kappa_ij = 1 + s_ij + s_ij^2 / 2,   s_ij = feature_dim^-1/2 <q_i, k_j>   (``sympow.based``)

    with q, k projected to ``feature_dim`` (16 in Based) per head and v to ``head_dim``, after a short
    causal depthwise convolution of the input (``conv_size`` taps, 3 by default; 0 or 1 for none).
    Projections and convolution keep PyTorch's initialisation. The ``LayerState`` holds S [B, H,
    1 + f + f (f + 1) / 2, head_dim] and the convolution's last ``conv_size - 1`` inputs.
    """

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        *,
        feature_dim: int = 16,
        head_dim: int | None = None,
        conv_size: int = 3,
    ) -> None:
        head_dim = hidden_size // num_heads if head_dim is None else head_dim
        super().__init__(hidden_size, num_heads, query_dim=feature_dim, value_dim=head_dim,
                         conv_size=conv_size)  # fmt: skip

    def attend(self, q, k, v, x, initial_state, return_state, options):
        return variants.based(q, k, v, initial_state=initial_state, return_state=return_state, **options)


class ReBasedAttention(BasedAttention):
    r"""ReBased (Aksenov et al., 2024, "Linear transformers with learnable kernel functions are better
    in-context models"): Based with the Taylor kernel replaced by sympow p = 2 on affinely normalised q, k,

        q^ = gamma * LN(q) + beta,  k^ = gamma * LN(k) + beta   (per head, over the feature axis; gamma,
                                                                 beta [feature_dim] shared by the heads)
        kappa_ij = (feature_dim^-1/2 <q^_i, k^_j>)^2            (``sympow.rebased``)

    gamma starting at 1 and beta at 0 (LayerNorm's initialisation), the LayerNorm eps 1e-5, and the same
    feature dimension and short convolution as ``BasedAttention``.
    """

    def __init__(self, hidden_size: int, num_heads: int, *, feature_dim: int = 16, **options: Any) -> None:
        """``options``: ``head_dim`` and ``conv_size``, as for ``BasedAttention``."""
        super().__init__(hidden_size, num_heads, feature_dim=feature_dim, **options)
        self.gamma = nn.Parameter(torch.ones(feature_dim))
        self.beta = nn.Parameter(torch.zeros(feature_dim))

    def attend(self, q, k, v, x, initial_state, return_state, options):
        return variants.rebased(
            q, k, v, gamma=self.gamma, beta=self.beta, initial_state=initial_state,
            return_state=return_state, **options,
        )  # fmt: skip
