"""``sympow.nn``: the seeds' systems as PyTorch layers, and a small model around them (api.md).

Every layer owns its projections and per-token parameter maps, takes x [batch, T, hidden_size] and has
``forward(x, state=None, return_state=False, **options)``, ``options`` being further keywords of
``sympow.attention`` (form, chunk_size, backend, state_dtype). Decoding token by token from the state
equals the full-sequence forward. Needs PyTorch.
"""

from .common import LayerState
from .layers import BasedAttention, LeaPformerAttention, ReBasedAttention, SympowAttention
from .model import MIXERS, LanguageModel
from .softmax import KVCache, SoftmaxAttention

__all__ = [
    "MIXERS", "BasedAttention", "KVCache", "LanguageModel", "LayerState", "LeaPformerAttention",
    "ReBasedAttention", "SoftmaxAttention", "SympowAttention",
]  # fmt: skip
