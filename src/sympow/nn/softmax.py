r"""Softmax attention with RoPE, the baseline of the experiments (torch's scaled_dot_product_attention).

    y_i = sum_{j<=i} softmax_j(<R(i theta) q_i, R(j theta) k_j> / sqrt(d)) v_j,   theta_m = base^(-2m/d)

Its state is the cache of every earlier key and value (``KVCache``), so the memory of a decode step
grows with the context: the contrast with the fixed-size state of the linear layers.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import nn

__all__ = ["KVCache", "SoftmaxAttention"]


class KVCache(NamedTuple):
    """Keys (rotated) and values of every token so far: k [B, H, P, d], v [B, H, P, e]."""

    k: torch.Tensor
    v: torch.Tensor


def rotate_half(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """R(angles) x in the "half" layout of math.md 3: pairs (x_m, x_{m+d/2}); angles [T, d/2]."""
    first, second = x.chunk(2, dim=-1)
    cos, sin = torch.cos(angles).to(x.dtype), torch.sin(angles).to(x.dtype)
    return torch.cat([first * cos - second * sin, first * sin + second * cos], dim=-1)


class SoftmaxAttention(nn.Module):
    """Causal multi-head softmax attention with fixed RoPE; x [B, T, hidden] -> y [B, T, hidden].

    ``forward(x, state=None, return_state=False, **options)`` as the linear layers; ``state`` is the
    ``KVCache`` of the tokens before x. ``options`` of ``sympow.attention`` do not apply and are refused.
    """

    def __init__(self, hidden_size: int, num_heads: int, *, head_dim: int | None = None,
                 rotary_base: float = 10000.0) -> None:  # fmt: skip
        super().__init__()
        head_dim = hidden_size // num_heads if head_dim is None else head_dim
        if head_dim < 2 or head_dim % 2:
            raise ValueError(f"head_dim must be an even int >= 2 (rotary pairs), got {head_dim}")
        self.hidden_size, self.num_heads, self.head_dim = hidden_size, num_heads, head_dim
        self.qkv = nn.Linear(hidden_size, 3 * num_heads * head_dim, bias=False)
        self.o_proj = nn.Linear(num_heads * head_dim, hidden_size, bias=False)
        theta = [rotary_base ** (-2.0 * m / head_dim) for m in range(head_dim // 2)]
        self.register_buffer("theta", torch.tensor(theta, dtype=torch.float64), persistent=False)

    def forward(self, x: torch.Tensor, state: KVCache | None = None, return_state: bool = False,
                **options: Any) -> torch.Tensor | tuple[torch.Tensor, KVCache]:  # fmt: skip
        if options:
            raise TypeError(f"SoftmaxAttention takes no options of sympow.attention, got {sorted(options)}")
        T = x.shape[1]
        q, k, v = self.qkv(x).unflatten(-1, (3, self.num_heads, self.head_dim)).permute(2, 0, 3, 1, 4)
        past = 0 if state is None else state.k.shape[-2]
        positions = torch.arange(past, past + T, device=x.device, dtype=torch.float64)
        angles = positions[:, None] * self.theta.to(x.device)
        q, k = rotate_half(q, angles), rotate_half(k, angles)
        if state is not None:
            k, v = torch.cat([state.k, k], dim=-2), torch.cat([state.v, v], dim=-2)
        if past:
            mask = torch.arange(past + T, device=x.device) <= positions.to(torch.long)[:, None]
            o = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        else:
            o = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        y = self.o_proj(o.transpose(1, 2).flatten(-2))
        return (y, KVCache(k, v)) if return_state else y
