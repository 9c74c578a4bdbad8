"""Kernels as polynomials in the score (math.md section 1).

Every kernel of the family is kappa(s) = sum_n c_n s^n over a few degrees n, with s = sigma <x, y> taken
on the rotated (and, for ``relu``, rectified) inputs:

    sympow, power p:   {p: 1}                    kappa = s^p
    taylor, power p:   {n: 1/n! for n = 0..p}    kappa = sum_n s^n / n!
    identity:          {1: 1}                    kappa = s
    relu:              {1: 1} on relu(x)         kappa = sigma <relu x, relu y>

Its exact feature map is phi(x) = concat_n sqrt(c_n) phi_n(sigma^{1/2} x) (see ``features``), of size
D = sum_n C(d+n-1, n). Normalised output needs kappa >= 0, which holds for even p and for relu.

Taylor's coefficients 1/n! are held as float64 numbers, so its power is at most ``MAX_TAYLOR_POWER`` =
170, the largest n whose 1/n! is a normal float64 (1/171! ~ 8e-310 lies below the smallest normal,
2.2e-308, and 171! itself exceeds the largest float64).
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass

KERNELS = ("sympow", "taylor", "relu", "identity")


def _max_taylor_power() -> int:
    """The largest n with 1/n! >= the smallest normal float64 (170)."""
    n, floor = 1, math.log(sys.float_info.min)
    while -math.lgamma(n + 2) >= floor:
        n += 1
    return n


MAX_TAYLOR_POWER = _max_taylor_power()


@dataclass(frozen=True)
class Kernel:
    """A kernel: the degrees n with coefficients c_n > 0, whether inputs are rectified first, and whether
    kappa >= 0 for every score (as normalised output requires)."""

    name: str
    degrees: tuple[int, ...]
    coefficients: tuple[float, ...]
    rectify: bool = False
    nonnegative: bool = False

    @property
    def log_coefficients(self) -> tuple[float, ...]:
        # a plain property (no cached_property, whose lock torch.compile cannot trace)
        return tuple(math.log(c) for c in self.coefficients)

    @property
    def description(self) -> str:
        """The kernel as ``attention`` names it, e.g. "kernel='sympow', power=2"."""
        if self.name in ("sympow", "taylor"):
            return f"kernel={self.name!r}, power={max(self.degrees)}"
        return f"kernel={self.name!r}"

    def feature_size(self, d: int) -> int:
        """D = sum_n C(d+n-1, n); C(d+p, p) for the degrees 0..p of taylor (an exact integer, cheap for
        any power: math.comb)."""
        p = max(self.degrees)
        if self.degrees == tuple(range(p + 1)):
            return math.comb(d + p, p)
        return sum(math.comb(d + n - 1, n) for n in self.degrees)


def make_kernel(name: str, power: int) -> Kernel:
    """The kernel called ``name``; ``power`` is p for sympow and taylor and is ignored otherwise."""
    if name == "sympow":
        return Kernel(name, (power,), (1.0,), nonnegative=power % 2 == 0)
    if name == "taylor":
        if power > MAX_TAYLOR_POWER:
            raise ValueError(
                f"power must be at most {MAX_TAYLOR_POWER} for kernel 'taylor' (its coefficient 1/p! must be "
                f"a normal float64), got power={power}"
            )
        degrees = tuple(range(power + 1))
        # sum_{n<=p} s^n/n! > 0 for even p: its minimum sits where the derivative, the same sum to p-1,
        # vanishes, and there it equals s^p/p! >= 0 (and is not 0, as s = 0 gives 1).
        coefficients = tuple(1.0 / math.factorial(n) for n in degrees)
        return Kernel(name, degrees, coefficients, nonnegative=power % 2 == 0)
    if name == "identity":
        return Kernel(name, (1,), (1.0,))
    if name == "relu":
        return Kernel(name, (1,), (1.0,), rectify=True, nonnegative=True)
    raise ValueError(f"kernel must be one of {KERNELS}, got {name!r}")
