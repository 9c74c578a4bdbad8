"""The small model: decoding token by token from its blocks' states equals the full forward; bad input
is refused by name."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from sympow.nn import MIXERS, LanguageModel  # noqa: E402
from sympow.testing.tolerances import tolerance  # noqa: E402

from .layers import relative_error  # noqa: E402

OPTIONS = {"sympow": {"gating": True, "rotary": "conformal", "max_length": 32}, "based": {"feature_dim": 4},
           "rebased": {"feature_dim": 4}}  # fmt: skip


@pytest.mark.parametrize("mixer", sorted(MIXERS))
def test_decode_equals_full_forward(mixer):
    torch.manual_seed(0)
    model = LanguageModel(32, 16, 2, 2, mixer=mixer, mixer_options=OPTIONS.get(mixer)).double()
    tokens = torch.randint(0, 32, (2, 10), generator=torch.Generator().manual_seed(1))
    logits = model(tokens)
    assert logits.shape == (2, 10, 32) and logits.dtype == torch.float64
    state, steps = None, []
    for t in range(10):
        step, state = model(tokens[:, t : t + 1], state, return_state=True)
        steps.append(step)
    assert len(state) == 2
    assert relative_error(torch.cat(steps, dim=1), logits) <= tolerance("float64")


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="mixer must be one of"):
        LanguageModel(8, 8, 1, 1, mixer="mamba")
    model = LanguageModel(8, 8, 1, 2, mixer="sympow")
    with pytest.raises(ValueError, match=r"tokens must be an int tensor \[batch, T\]"):
        model(torch.zeros(2, 3))
    _, state = model(torch.zeros(1, 3, dtype=torch.long), return_state=True)
    with pytest.raises(ValueError, match=r"one entry per block \(1\), got 2"):
        model(torch.zeros(1, 3, dtype=torch.long), (*state, *state))
