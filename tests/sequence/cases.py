"""The cases of the sequence-parallel tests, shared by the JAX and the torch workers.

Each case is one call of ``attention`` split over the members of a group, compared with the same call
on the whole sequence on one device: outputs, the final state (S and z unscaled, and mu) and the
gradients of a loss sum(y W) + sum(z_final w) with respect to q, k, v, log_gate, rotary and both
proportions. Every input is given (gates down to -50, rotary, proportions), T is not a multiple of the
chunk size nor, on any member, is its slice, and the resumed cases start from a State made by a first
call (the same on every member).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sympow.spec import sequence
from sympow.testing import make_inputs

NAMES = ("q", "k", "v", "log_gate", "rotary", "a", "b")
T, D, E, CHUNK = 20, 4, 3, 3
PREFIX = 5  # tokens of the first call that makes the resumed cases' State


@dataclass(frozen=True)
class Case:
    kernel: str
    power: int
    normalize: bool
    exchange: str = "allgather"
    form: str = "chunked"
    dtype: str = "float64"
    state_dtype: str | None = None
    resume: bool = True
    gradients: bool = True

    @property
    def id(self) -> str:
        parts = [f"{self.kernel}{self.power}", self.exchange, self.form, self.dtype]
        parts += [f"state-{self.state_dtype}"] if self.state_dtype else []
        return "-".join(parts + ([] if self.resume else ["fresh"]))

    def options(self) -> dict:
        return dict(
            kernel=self.kernel, power=self.power, normalize=self.normalize, form=self.form,
            chunk_size=CHUNK, state_dtype=self.state_dtype, return_state=True,
        )  # fmt: skip


KERNELS = (
    ("sympow", 2, True), ("sympow", 4, True), ("taylor", 3, False), ("relu", 1, True), ("identity", 1, False),
)  # fmt: skip
LOW = ("float32", "bfloat16", "float16")
CASES = tuple(
    [Case(k, p, n, exchange) for k, p, n in KERNELS for exchange in ("allgather", "scan")]
    + [Case("sympow", 2, True, "scan", form) for form in ("parallel", "recurrent")]
    + [Case("sympow", 2, True, "auto", resume=False)]
    + [Case("sympow", 2, True, "scan", dtype=dtype, gradients=False) for dtype in LOW]
    + [Case("sympow", 2, True, "allgather", dtype="float32", state_dtype="float64", gradients=False)]
)


def inputs(seed: int = 0) -> dict[str, np.ndarray]:
    """Float64 inputs of the whole sequence, T + PREFIX tokens (the first PREFIX make the State)."""
    x = make_inputs(batch=(2,), T=T + PREFIX, d=D, e=E, seed=seed, gate=True, gate_min=-50.0, rotary=True,
                    proportions=True)  # fmt: skip
    a, b = x.pop("proportions")
    return {**x, "a": a, "b": b}


def output_weights() -> np.ndarray:
    """W [2, T, e]; the loss is sum(y W) + sum_r z_r cos(r) of the final state's unscaled z."""
    return np.random.default_rng(11).standard_normal((2, T, E))


def model_bytes(case: Case, P: int, feature_size: int, traced: bool, batch: int = 2) -> int | None:
    """Bytes a receiving member gets by the cost model (None for "auto", whose choice the test leaves to
    ``choose_exchange``): the state element in the state's dtype, the rotary totals in float64."""
    if case.exchange == "auto":
        return None
    wide = case.dtype == "float64" or case.state_dtype == "float64"
    return sequence.model_bytes(P, case.exchange, batch, feature_size, E, 8 if wide else 4, True,
                                batch * D // 2, 8, traced)  # fmt: skip


def relative(got: np.ndarray, expected: np.ndarray) -> float:
    scale = max(float(np.max(np.abs(expected))), 1e-300)
    return float(np.max(np.abs(np.asarray(got, dtype=np.float64) - expected))) / scale
