"""The one input factory shared by the tests and the benchmarks.

``make_inputs`` draws seeded NumPy inputs; each kind of input comes from its own child generator of
the seed, so switching gating, rotary or proportions on or off leaves the other arrays unchanged.
``convert`` moves such a dict to another namespace (NumPy, PyTorch, JAX, array-api-strict)
and dtype.
"""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np

_STREAMS = ("q", "k", "v", "log_gate", "rotary", "proportions")

_NAMESPACE_MODULES = {
    "numpy": "numpy",
    "torch": "torch",
    "jax": "jax.numpy",
    "jax.numpy": "jax.numpy",
    "array_api_strict": "array_api_strict",
}


def make_inputs(
    *,
    batch: tuple[int, ...] = (),
    T: int,
    d: int,
    e: int,
    seed: int = 0,
    gate: bool = False,
    gate_min: float = -1.0,
    rotary: bool = False,
    rotary_scale: float = 0.5,
    proportions: bool = False,
    q_scale: float = 1.0,
    dtype: str = "float64",
) -> dict[str, Any]:
    """Seeded NumPy inputs for one attention call.

    Keys: ``q`` [*batch, T, d] (standard normal times ``q_scale``), ``k`` [*batch, T, d] and ``v``
    [*batch, T, e] (standard normal); with ``gate``, ``log_gate`` [*batch, T] uniform in
    [gate_min, 0]; with ``rotary``, ``rotary`` [*batch, T, d // 2] (normal times ``rotary_scale``);
    with ``proportions``, ``proportions`` = (a, b), each [*batch, T] uniform in [0, 1]. Arrays are
    drawn in float64 and then cast to ``dtype`` (a NumPy dtype name), so a float32 set is the
    float64 set rounded.
    """
    batch = tuple(int(n) for n in batch)
    if gate_min > 0:
        raise ValueError(f"gate_min must be <= 0, got {gate_min}")
    if rotary and d % 2:
        raise ValueError(f"rotary needs an even d, got d={d}")
    rngs = dict(
        zip(
            _STREAMS,
            (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(len(_STREAMS))),
            strict=True,
        )
    )
    np_dtype = np.dtype(dtype)
    out: dict[str, Any] = {
        "q": rngs["q"].standard_normal((*batch, T, d)) * q_scale,
        "k": rngs["k"].standard_normal((*batch, T, d)),
        "v": rngs["v"].standard_normal((*batch, T, e)),
    }
    if gate:
        # gate_min * [0, 1) lies in (gate_min, 0]: never positive.
        out["log_gate"] = gate_min * rngs["log_gate"].random((*batch, T))
    if rotary:
        out["rotary"] = rotary_scale * rngs["rotary"].standard_normal((*batch, T, d // 2))
    if proportions:
        rng = rngs["proportions"]
        out["proportions"] = (rng.random((*batch, T)), rng.random((*batch, T)))
    return _map(out, lambda a: np.asarray(a, dtype=np_dtype))


def namespace(xp: Any) -> Any:
    """The namespace module for ``xp``, given as a module or a name ("numpy", "jax", ...)."""
    if isinstance(xp, str):
        return importlib.import_module(_NAMESPACE_MODULES.get(xp, xp))
    return xp


def convert(inputs: dict[str, Any], xp: Any, dtype: str = "float64") -> dict[str, Any]:
    """``inputs`` (NumPy arrays, tuples of them, or None) as arrays of ``xp`` of ``dtype``.

    ``xp`` is a namespace module (numpy, torch, jax.numpy, array_api_strict) or its name;
    ``dtype`` a dtype name ("float32", "float64"). Tuples stay tuples; other values pass through.
    """
    xp = namespace(xp)
    target = getattr(xp, dtype)

    def one(a: Any) -> Any:
        a = np.asarray(a)
        if xp.__name__ == "torch":
            return xp.asarray(a.copy(), dtype=target)
        return xp.asarray(a, dtype=target)

    return _map(inputs, one)


def _map(inputs: dict[str, Any], fn: Any) -> dict[str, Any]:
    def go(value: Any) -> Any:
        if value is None:
            return None
        if isinstance(value, tuple):
            return tuple(go(item) for item in value)
        if isinstance(value, np.ndarray):
            return fn(value)
        return value

    return {key: go(value) for key, value in inputs.items()}
