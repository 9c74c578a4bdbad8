"""The shipped conformance cases: reading them, and what each one holds.

The cases live in ``sympow/testing/cases/`` as two files per version (``v1.npz``, ``v1.json``) plus
``schema.json``, a JSON Schema of the manifest, so that an implementation in any language can read them:

- ``v{N}.npz``: an uncompressed zip of ``.npy`` files, one per array, named ``{case}/{array}.npy``; every
  array is little-endian float64 (``<f8``), C order.
- ``v{N}.json``: the manifest, one entry per case with its options, tags, split point and the shape of
  each of its arrays.

Arrays of a case (``[*B]`` is its batch shape; inputs may have fewer or size-1 leading axes, which
broadcast):

    q, k [*B, T, d]   v [*B, T, e]   log_gate [*B, T]   a, b [*B, T] (proportions)   rotary [*B, T, d/2]
    y [*B, T, e]                          the float64 output of one call on the whole sequence
    S [*B, D', e], z [*B, D'], mu [*B, d/2]           the final state (true sums, no log scale)
    split_S, split_z, split_mu                         the state after the first ``split`` tokens

Packed cases (version 2 on; tag "packed"): the manifest entry's ``cu_seqlens`` holds the offsets
0 = o_0 <= ... <= o_N = T of N sequences packed along T (math.md 10). Every state then has a leading axis
of N (S [N, *B, D', e], ...), one per sequence, the final one of each sequence; ``initial_S``,
``initial_z``, ``initial_mu`` (tag "initial-state") are the state each sequence starts from (true sums),
and y and the final states are those of the loop of separate calls on each slice from them. Packed
cases have no split. Version 2 holds every case of version 1 unchanged, and the packed ones.

Optional inputs (log_gate, a and b, rotary) and mu are absent when unused. Inputs are rounded to 8
significant bits and flushed to zero below 2^-14 in magnitude, so they are exact in float16, bfloat16,
float32 and float64 alike: the float64 outputs are the exact-input reference for every dtype.

The state's feature axis D' follows math.md section 5: phi(x) = concat over the kernel's degrees n of
sqrt(c_n) phi_n(sigma^{1/2} x) (sympow: n = p, c = 1; taylor: n = 0..p, c_n = 1/n!; relu: sigma^{1/2}
relu(x); identity: sigma^{1/2} x); phi_n has one entry per multiset i_1 <= ... <= i_n of {0..d-1}, in
lexicographic order, equal to sqrt(n! / prod_m a_m!) prod_r x_{i_r}. With proportions D' = 2D: the rows
cos(pi b_j / 2) phi(k~_j) first, then sin(pi b_j / 2) phi(k~_j). mu is the accumulated rotary angle,
reduced modulo 2 pi (compare it modulo 2 pi).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

import numpy as np

CASES_VERSION = 2
FORMAT = "sympow-conformance"
INPUT_ARRAYS = ("q", "k", "v", "log_gate", "a", "b", "rotary")
STATE_ARRAYS = ("S", "z", "mu")


@dataclass(frozen=True)
class Case:
    """One conformance case: options, inputs and the float64 outputs and states (read-only NumPy)."""

    name: str
    tags: tuple[str, ...]
    kernel: str
    power: int
    scale: float | None
    normalize: bool
    eps: float
    rotary_layout: str
    split: int | None
    arrays: Mapping[str, np.ndarray] = field(repr=False)
    cu_seqlens: tuple[int, ...] | None = None  # packed sequences (version 2 on)

    @property
    def batch(self) -> tuple[int, ...]:
        return tuple(self.arrays["y"].shape[:-2])

    @property
    def T(self) -> int:
        return int(self.arrays["y"].shape[-2])

    @property
    def d(self) -> int:
        return int(self.arrays["q"].shape[-1])

    @property
    def e(self) -> int:
        return int(self.arrays["y"].shape[-1])

    @property
    def options(self) -> dict[str, Any]:
        """The keyword options of ``sympow.attention`` other than the arrays."""
        return {
            "kernel": self.kernel,
            "power": self.power,
            "scale": self.scale,
            "normalize": self.normalize,
            "eps": self.eps,
            "rotary_layout": self.rotary_layout,
        }

    @property
    def inputs(self) -> dict[str, Any]:
        """q, k, v, log_gate, proportions (a, b) and rotary (None where unused), as in ``make_inputs``."""
        a = self.arrays
        proportions = (a["a"], a["b"]) if "a" in a else None
        return {
            "q": a["q"],
            "k": a["k"],
            "v": a["v"],
            "log_gate": a.get("log_gate"),
            "proportions": proportions,
            "rotary": a.get("rotary"),
        }

    @property
    def y(self) -> np.ndarray:
        return self.arrays["y"]

    def state(self, which: str = "final") -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """(S, z, mu) after the whole sequence (``"final"``) or after ``split`` tokens (``"split"``)."""
        if which not in ("final", "split"):
            raise ValueError(f"which must be 'final' or 'split', got {which!r}")
        prefix = "" if which == "final" else "split_"
        if which == "split" and self.split is None:
            raise ValueError(f"case {self.name!r} has no split point")
        a = self.arrays
        return a[prefix + "S"], a[prefix + "z"], a.get(prefix + "mu")

    def initial(self) -> tuple[np.ndarray, np.ndarray, np.ndarray | None] | None:
        """(S, z, mu) each packed sequence starts from (true sums), or None when it starts empty."""
        a = self.arrays
        if "initial_S" not in a:
            return None
        return a["initial_S"], a["initial_z"], a.get("initial_mu")

    def __str__(self) -> str:
        return self.name


def cases_directory() -> Any:
    """The folder of the shipped case files (a ``Traversable``)."""
    return resources.files("sympow.testing").joinpath("cases")


@cache
def _load(version: int) -> tuple[Case, ...]:
    folder = cases_directory()
    manifest_file = folder.joinpath(f"v{version}.json")
    if not manifest_file.is_file():
        raise ValueError(f"version must name a shipped case set, got {version!r} (no {manifest_file})")
    manifest = json.loads(manifest_file.read_text(encoding="utf-8"))
    with folder.joinpath(f"v{version}.npz").open("rb") as handle, np.load(handle) as archive:
        stored = {key: archive[key] for key in archive.files}
    return tuple(_case(entry, stored) for entry in manifest["cases"])


def _case(entry: Mapping[str, Any], stored: Mapping[str, np.ndarray]) -> Case:
    arrays = {}
    for key in entry["arrays"]:
        array = np.array(stored[f"{entry['name']}/{key}"], dtype=np.float64)
        array.setflags(write=False)
        arrays[key] = array
    options = entry["options"]
    return Case(
        name=entry["name"],
        tags=tuple(entry["tags"]),
        kernel=options["kernel"],
        power=int(options["power"]),
        scale=None if options["scale"] is None else float(options["scale"]),
        normalize=bool(options["normalize"]),
        eps=float(options["eps"]),
        rotary_layout=options["rotary_layout"],
        split=entry["split"],
        arrays=arrays,
        cu_seqlens=None if entry.get("cu_seqlens") is None else tuple(entry["cu_seqlens"]),
    )


def load_cases(
    *,
    version: int = CASES_VERSION,
    names: Iterable[str] | None = None,
    tags: Iterable[str] | None = None,
    exclude_tags: Iterable[str] | None = None,
) -> list[Case]:
    """The shipped cases of ``version``, optionally only those named, having every tag in ``tags``, and
    none of ``exclude_tags`` (``tags()`` lists them: kernels, "gate", "proportions", "rotary", ...)."""
    cases = list(_load(int(version)))
    if names is not None:
        wanted = list(names)
        known = {case.name for case in cases}
        unknown = [name for name in wanted if name not in known]
        if unknown:
            raise ValueError(f"names must be case names of version {version}, got unknown {unknown}")
        cases = [case for case in cases if case.name in set(wanted)]
    if tags is not None:
        required = set(tags)
        cases = [case for case in cases if required <= set(case.tags)]
    if exclude_tags is not None:
        excluded = set(exclude_tags)
        cases = [case for case in cases if not excluded & set(case.tags)]
    return cases


def all_tags(version: int = CASES_VERSION) -> list[str]:
    """Every tag used by the cases of ``version``."""
    return sorted({tag for case in _load(int(version)) for tag in case.tags})


def wrap_angle(angle: np.ndarray) -> np.ndarray:
    """An angle reduced to [-pi, pi)."""
    return angle - 2.0 * math.pi * np.floor((angle + math.pi) / (2.0 * math.pi))
