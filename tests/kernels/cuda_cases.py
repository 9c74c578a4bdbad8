"""Shared cases of the CUDA C kernel tests: inputs in the kernels' dtypes and the float64 reference.

Used by the host-emulation tests (NumPy arrays, kernels run by g++ on the host) and by the ``gpu`` parity
tests (CuPy and PyTorch CUDA arrays): both compare against ``sympow.attention`` in float64 on the same
inputs rounded to the tested dtype, with the one tolerance table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

import sympow
from sympow.testing import make_inputs


def to_bfloat16_bits(x: np.ndarray) -> np.ndarray:
    """float values -> int16 bits of bfloat16, rounded to nearest even."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    return bits.astype(np.uint16).view(np.int16)


def from_bfloat16_bits(bits: np.ndarray) -> np.ndarray:
    return (np.asarray(bits).view(np.uint16).astype(np.uint32) << 16).view(np.float32).astype(np.float64)


def rounded(x: np.ndarray, dtype: str) -> np.ndarray:
    """x rounded to ``dtype``, as float64."""
    if dtype == "bfloat16":
        return from_bfloat16_bits(to_bfloat16_bits(x))
    return np.asarray(x, dtype=dtype).astype(np.float64)


def stored(x: np.ndarray, dtype: str) -> np.ndarray:
    """x in the kernels' storage of ``dtype`` (bfloat16 as int16 bits)."""
    return to_bfloat16_bits(x) if dtype == "bfloat16" else np.asarray(x, dtype=dtype)


@dataclass(frozen=True)
class Case:
    """One kernel problem: options of ``sympow.attention`` and the inputs, rounded to ``dtype``."""

    T: int
    d: int
    e: int
    batch: tuple[int, ...] = (2,)
    kernel: str = "sympow"
    power: int = 2
    dtype: str = "float32"
    gate: bool = True
    rotary: bool = True
    rotary_layout: str = "half"
    normalize: bool = True
    eps: float = 0.0
    chunk_size: int = 16
    q_scale: float = 1.0
    seed: int = 0

    @property
    def p(self) -> int:
        return 1 if self.kernel == "identity" else self.power

    @property
    def id(self) -> str:
        parts = [
            f"B{'x'.join(map(str, self.batch))}-T{self.T}-D{self.d}-E{self.e}", self.kernel, f"p{self.p}",
            self.dtype,
        ]  # fmt: skip
        parts += ["gate"] * self.gate + [f"rotary-{self.rotary_layout}"] * self.rotary
        parts += [] if self.normalize else ["unnormalized"]
        parts += [f"eps{self.eps}"] * (self.eps > 0)
        return "-".join(parts)

    def inputs(self) -> dict[str, Any]:
        """float64 NumPy inputs already rounded to ``dtype``."""
        raw = make_inputs(
            batch=self.batch, T=self.T, d=self.d, e=self.e, seed=self.seed, gate=self.gate,
            rotary=self.rotary, q_scale=self.q_scale,
        )  # fmt: skip
        return {key: rounded(value, self.dtype) for key, value in raw.items()}

    def options(self) -> dict[str, Any]:
        return {
            "kernel": self.kernel, "power": self.power, "normalize": self.normalize, "eps": self.eps,
            "rotary_layout": self.rotary_layout,
        }  # fmt: skip

    def reference(self, inputs: dict[str, Any], *, initial_state: Any = None) -> tuple[Any, Any]:
        """(y, State) of the float64 specification on ``inputs``."""
        return sympow.attention(
            inputs["q"], inputs["k"], inputs["v"], log_gate=inputs.get("log_gate"),
            rotary=inputs.get("rotary"), form="chunked", chunk_size=self.chunk_size,
            initial_state=initial_state, return_state=True, backend="reference", **self.options(),
        )  # fmt: skip


def true_state(state: Any) -> tuple[np.ndarray, np.ndarray]:
    """exp(log_scale) (S, z) of a State of NumPy-convertible arrays, in float64."""
    from sympow.testing import to_numpy

    factor = np.exp(to_numpy(state.log_scale))
    return to_numpy(state.S) * factor[..., None, None], to_numpy(state.z) * factor[..., None]
