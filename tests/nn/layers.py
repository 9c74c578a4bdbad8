"""The layers under test, built small and seeded: one factory for the tests of sympow.nn."""

from __future__ import annotations

import torch

from sympow.nn import (
    BasedAttention,
    LeaPformerAttention,
    ReBasedAttention,
    SoftmaxAttention,
    SympowAttention,
)  # fmt: skip

HIDDEN, HEADS = 16, 2

LAYERS = {
    "sympow": lambda: SympowAttention(HIDDEN, HEADS),
    "sympow-p4-fixed": lambda: SympowAttention(HIDDEN, HEADS, power=4, rotary="fixed", head_dim=4),
    "sympow-gated": lambda: SympowAttention(HIDDEN, HEADS, gating=True, rotary="fixed"),
    "conformal": lambda: SympowAttention(HIDDEN, HEADS, gating=True, rotary="conformal", max_length=64),
    "leapformer": lambda: LeaPformerAttention(HIDDEN, HEADS, proportion_hidden=4),
    "leapformer-floor": lambda: LeaPformerAttention(HIDDEN, HEADS, denominator_floor=0.1),
    "relu-conv": lambda: LeaPformerAttention(HIDDEN, HEADS, learned_proportions=False, conv_size=3),
    "based": lambda: BasedAttention(HIDDEN, HEADS, feature_dim=4),
    "rebased": lambda: ReBasedAttention(HIDDEN, HEADS, feature_dim=4),
}
LINEAR = sorted(LAYERS)
ALL = [*LINEAR, "softmax"]


def layer(name: str, dtype: torch.dtype = torch.float64, seed: int = 0) -> torch.nn.Module:
    """The layer ``name`` with seeded parameters, the zero-initialised gate and rotary maps drawn too (so
    that the tests see data-dependent gates and angles), in ``dtype``."""
    torch.manual_seed(seed)
    module = SoftmaxAttention(HIDDEN, HEADS) if name == "softmax" else LAYERS[name]()
    with torch.no_grad():
        for parameter_name, parameter in module.named_parameters():
            if parameter_name.startswith(("gate_proj", "rotary_proj")):
                parameter.normal_(0.0, 0.5)
            if parameter_name in ("gamma", "beta"):
                parameter.add_(0.1 * torch.randn_like(parameter))
    return module.to(dtype)


def inputs(T: int, dtype: torch.dtype = torch.float64, batch: int = 2, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, T, HIDDEN, generator=generator, dtype=torch.float64).to(dtype)


def relative_error(y: torch.Tensor, reference: torch.Tensor) -> float:
    """max |y - y_ref| / max |y_ref|, in float64."""
    y, reference = y.detach().double(), reference.detach().double()
    return float((y - reference).abs().max() / reference.abs().max().clamp_min(1e-300))
