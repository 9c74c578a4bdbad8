r"""A small language model around any layer of ``sympow.nn``: the harness of the experiments.

    h_0 = E[tokens]                                    [B, T, hidden]
    h   <- h + mixer(LN(h)),  h <- h + MLP(LN(h))      per block (pre-norm), MLP = Linear-GELU-Linear
    logits = LN(h) W_head                              [B, T, vocab]

``MIXERS`` names the layers; ``mixer_options`` go to the layer's constructor. The state of the model is
the tuple of its blocks' layer states, so ``forward(tokens, state, return_state=True)`` decodes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .layers import BasedAttention, LeaPformerAttention, ReBasedAttention, SympowAttention
from .softmax import SoftmaxAttention

__all__ = ["MIXERS", "LanguageModel"]

MIXERS: dict[str, type[nn.Module]] = {
    "based": BasedAttention,
    "leapformer": LeaPformerAttention,
    "rebased": ReBasedAttention,
    "softmax": SoftmaxAttention,
    "sympow": SympowAttention,
}


class Block(nn.Module):
    """Pre-norm residual block: h + mixer(LN(h)), then h + MLP(LN(h))."""

    def __init__(self, hidden_size: int, num_heads: int, mixer: str, mixer_options: dict[str, Any],
                 mlp_ratio: int) -> None:  # fmt: skip
        super().__init__()
        self.mixer_norm = nn.LayerNorm(hidden_size)
        self.mixer = MIXERS[mixer](hidden_size, num_heads, **mixer_options)
        self.mlp_norm = nn.LayerNorm(hidden_size)
        self.mlp = nn.Sequential(nn.Linear(hidden_size, mlp_ratio * hidden_size), nn.GELU(),
                                 nn.Linear(mlp_ratio * hidden_size, hidden_size))  # fmt: skip

    def forward(self, h: torch.Tensor, state: Any, return_state: bool, options: dict[str, Any]) -> Any:
        out = self.mixer(self.mixer_norm(h), state, return_state, **options)
        mixed, state = out if return_state else (out, None)
        h = h + mixed
        return h + self.mlp(self.mlp_norm(h)), state


class LanguageModel(nn.Module):
    """Embedding, ``num_layers`` pre-norm blocks of one mixer and an MLP, a final norm and a linear head.

    ``forward(tokens [B, T] int, state=None, return_state=False, **options)`` returns logits
    [B, T, vocab_size] (and the tuple of the blocks' states); ``options`` pass to every mixer call
    (form, chunk_size, backend, state_dtype for the ``sympow`` layers).
    """

    def __init__(
        self,
        vocab_size: int,
        hidden_size: int,
        num_layers: int,
        num_heads: int,
        *,
        mixer: str = "sympow",
        mixer_options: dict[str, Any] | None = None,
        mlp_ratio: int = 4,
    ) -> None:
        super().__init__()
        if mixer not in MIXERS:
            raise ValueError(f"mixer must be one of {sorted(MIXERS)}, got {mixer!r}")
        self.embedding = nn.Embedding(vocab_size, hidden_size)
        self.blocks = nn.ModuleList(
            Block(hidden_size, num_heads, mixer, dict(mixer_options or {}), mlp_ratio)
            for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(hidden_size)
        self.head = nn.Linear(hidden_size, vocab_size, bias=False)
        nn.init.normal_(self.embedding.weight, std=0.02)

    def forward(
        self,
        tokens: torch.Tensor,
        state: Sequence[Any] | None = None,
        return_state: bool = False,
        **options: Any,
    ) -> torch.Tensor | tuple[torch.Tensor, tuple[Any, ...]]:
        if tokens.ndim != 2 or tokens.dtype not in (torch.int32, torch.int64):
            raise ValueError(
                f"tokens must be an int tensor [batch, T], got {tokens.dtype} {list(tokens.shape)}"
            )
        if state is not None and len(state) != len(self.blocks):
            raise ValueError(f"state must hold one entry per block ({len(self.blocks)}), got {len(state)}")
        h = self.embedding(tokens)
        states = []
        for i, block in enumerate(self.blocks):
            h, block_state = block(h, None if state is None else state[i], return_state, options)
            states.append(block_state)
        logits = self.head(self.norm(h))
        return (logits, tuple(states)) if return_state else logits
