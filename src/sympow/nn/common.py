r"""What every layer of ``sympow.nn`` shares: heads, the short causal convolution, the layer state.

A layer maps x [B, T, hidden] to y [B, T, hidden] in four steps,

    (optional) x <- causal depthwise convolution of x          (Based, ReBased)
    q, k, v <- x W_q, x W_k, x W_v, split into H heads          [B, H, T, d], [B, H, T, d], [B, H, T, e]
    o <- one call of ``sympow.attention`` or a variant           [B, H, T, e]
    y <- concat of the heads of o, times W_o                     [B, T, hidden]

and keeps, between calls, a ``LayerState``: the attention's ``sympow.State`` (S [B, H, D', e], z, mu,
log_scale) and the convolution's last K - 1 inputs. Processing a sequence in any number of calls, each
resuming from the last ``LayerState``, equals one call (math.md section 5), which is what decoding is.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import nn

from ..spec.state import State

__all__ = ["AttentionLayer", "CausalConv", "LayerState"]


class LayerState(NamedTuple):
    """What a layer resumes from: ``attention`` (a ``sympow.State``, batch axes [B, H]) and ``conv`` (the
    last K - 1 inputs of the short convolution, [B, K - 1, hidden], or None for a layer without one)."""

    attention: State
    conv: torch.Tensor | None = None


class CausalConv(nn.Module):
    r"""Depthwise causal convolution over the token axis, x [B, T, C] -> [B, T, C]:

        y_t = sum_{s=0..K-1} w_s * x_{t-s}    (per channel; x_{t} = 0 before the first token)

    with the previous call's last K - 1 inputs standing in for the tokens before this call. This is the
    short convolution that Based pairs with its linear attention (Arora et al., 2024, "Simple linear
    attention language models balance the recall-throughput tradeoff": a short gated convolution beside
    the Taylor attention). Initialised as PyTorch's ``Conv1d`` (uniform in +-1/sqrt(K)).
    """

    def __init__(self, channels: int, kernel_size: int) -> None:
        super().__init__()
        if kernel_size < 1:
            raise ValueError(f"kernel_size must be >= 1, got {kernel_size}")
        self.kernel_size = kernel_size
        self.conv = nn.Conv1d(channels, channels, kernel_size, groups=channels, bias=False)

    def forward(self, x: torch.Tensor, past: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(y [B, T, C], the last K - 1 inputs [B, K - 1, C] to resume from)."""
        if past is None:
            past = x.new_zeros(x.shape[0], self.kernel_size - 1, x.shape[2])
        elif tuple(past.shape) != (x.shape[0], self.kernel_size - 1, x.shape[2]):
            raise ValueError(
                f"state.conv must have shape [batch, kernel_size - 1, hidden] = "
                f"{[x.shape[0], self.kernel_size - 1, x.shape[2]]}, got {list(past.shape)}"
            )
        extended = torch.cat([past.to(x.dtype), x], dim=1)
        y = self.conv(extended.transpose(1, 2)).transpose(1, 2)
        return y, extended[:, extended.shape[1] - (self.kernel_size - 1) :]


class AttentionLayer(nn.Module):
    """Projections, heads, the optional short convolution and the state plumbing of every layer.

    A subclass sets ``query_dim`` (d per head) and ``value_dim`` (e per head) through ``__init__`` and
    implements ``attend(q, k, v, x, initial_state, return_state, options)`` with q, k [B, H, T, d],
    v [B, H, T, e] and x the (convolved) input [B, T, hidden], returning what ``sympow.attention`` returns.
    """

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        *,
        query_dim: int,
        value_dim: int,
        conv_size: int = 0,
        bias: bool = False,
    ) -> None:
        super().__init__()
        for name, value, least in (("hidden_size", hidden_size, 1), ("num_heads", num_heads, 1),
                                   ("query_dim", query_dim, 1), ("value_dim", value_dim, 1),
                                   ("conv_size", conv_size, 0)):  # fmt: skip
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"{name} must be an int >= {least}, got {value!r}")
        self.hidden_size, self.num_heads = hidden_size, num_heads
        self.query_dim, self.value_dim = query_dim, value_dim
        self.q_proj = nn.Linear(hidden_size, num_heads * query_dim, bias=bias)
        self.k_proj = nn.Linear(hidden_size, num_heads * query_dim, bias=bias)
        self.v_proj = nn.Linear(hidden_size, num_heads * value_dim, bias=bias)
        self.o_proj = nn.Linear(num_heads * value_dim, hidden_size, bias=bias)
        self.conv = CausalConv(hidden_size, conv_size) if conv_size > 1 else None

    def heads(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        """[B, T, H * dim] -> [B, H, T, dim]."""
        return x.unflatten(-1, (self.num_heads, dim)).transpose(1, 2)

    def per_head(self, x: torch.Tensor) -> torch.Tensor:
        """[B, T, H] -> [B, H, T]: one scalar per head and token."""
        return x.transpose(1, 2)

    def forward(
        self,
        x: torch.Tensor,
        state: LayerState | None = None,
        return_state: bool = False,
        **options: Any,
    ) -> torch.Tensor | tuple[torch.Tensor, LayerState]:
        """y [B, T, hidden] (and the ``LayerState`` with ``return_state=True``) from x [B, T, hidden].

        ``state`` is the ``LayerState`` of an earlier call on the tokens before x. ``options`` are further
        keywords of ``sympow.attention`` (form, chunk_size, backend, state_dtype, ...).
        """
        if x.ndim != 3 or x.shape[-1] != self.hidden_size:
            raise ValueError(
                f"x must have shape [batch, T, hidden_size={self.hidden_size}], got {list(x.shape)}"
            )
        if state is not None and not isinstance(state, LayerState):
            raise TypeError(f"state must be a sympow.nn.LayerState, got {type(state).__name__}")
        conv_state = None
        if self.conv is not None:
            x, conv_state = self.conv(x, None if state is None else state.conv)
        q = self.heads(self.q_proj(x), self.query_dim)
        k = self.heads(self.k_proj(x), self.query_dim)
        v = self.heads(self.v_proj(x), self.value_dim)
        result = self.attend(q, k, v, x, None if state is None else state.attention, return_state, options)
        o, attention_state = result if return_state else (result, None)
        y = self.o_proj(o.transpose(1, 2).flatten(-2))
        return (y, LayerState(attention_state, conv_state)) if return_state else y

    def attend(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        x: torch.Tensor,
        initial_state: State | None,
        return_state: bool,
        options: dict[str, Any],
    ) -> Any:
        raise NotImplementedError  # each layer supplies its attention call
