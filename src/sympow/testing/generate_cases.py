"""Regenerate the conformance cases: ``python -m sympow.testing.generate_cases [--out DIR]``.

Every case is built from the one input factory (``make_inputs``, seeded by the case's index), rounded so
that its inputs are exact in every tested dtype (``exact_in_all_dtypes``), and run once through the
float64 reference (the "reference" backend, parallel form, on NumPy) for its output, its final state and
its state after ``split`` tokens. The files are written byte for byte deterministically: arrays in a zip
with fixed timestamps and no compression, JSON with sorted keys. See ``sympow.testing.suite`` for the
format. Bump ``CASES_VERSION`` when the set changes.
"""

from __future__ import annotations

import argparse
import io
import json
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from .inputs import make_inputs
from .suite import CASES_VERSION, FORMAT, INPUT_ARRAYS, STATE_ARRAYS

ZIP_DATE = (1980, 1, 1, 0, 0, 0)
SIGNIFICANT_BITS = 8  # bfloat16's significand: the narrowest of float16, bfloat16, float32, float64
SMALLEST = 2.0**-14  # float16's smallest normal number


@dataclass(frozen=True)
class Spec:
    """How to build one case."""

    kernel: str
    power: int = 1
    normalize: bool = True
    gate: bool = False
    proportions: bool = False
    rotary: str | None = None
    eps: float = 0.0
    scale: float | None = None
    batch: tuple[int, ...] = (2,)
    T: int = 13
    d: int = 0  # 0: 6 for p <= 2, else 4
    e: int = 3
    split: int | None = 6
    q_scale: float = 1.0
    gate_min: float = -1.0
    special: str | None = None  # "zero-denominator" or "broadcast"
    tags: tuple[str, ...] = field(default=())
    offsets: tuple[int, ...] | None = None  # packed sequences (cu_seqlens); T is then offsets[-1]
    initial: bool = False  # packed: one initial state per sequence (the "from-state" check)

    @property
    def head_dim(self) -> int:
        return self.d or (6 if self.power <= 2 else 4)

    @property
    def name(self) -> str:
        parts = [self.kernel]
        if self.kernel in ("sympow", "taylor"):
            parts.append(f"p{self.power}")
        parts.append("norm" if self.normalize else "raw")
        if self.eps:
            parts.append(f"eps{self.eps:g}")
        if self.scale is not None:
            parts.append(f"scale{self.scale:g}")
        parts.extend(self.tags)
        weights = [w for w, on in (("gate", self.gate), ("prop", self.proportions)) if on]
        if self.rotary:
            weights.append(f"rope_{self.rotary}")
        parts.extend(weights or ["plain"])
        return "-".join(parts)

    @property
    def all_tags(self) -> list[str]:
        tags = [self.kernel, "normalize" if self.normalize else "unnormalized"]
        if self.kernel in ("sympow", "taylor"):
            tags.append(f"p{self.power}")
        flags = (
            ("gate", self.gate),
            ("proportions", self.proportions),
            ("rotary", self.rotary is not None),
            ("eps", self.eps > 0),
            ("scale", self.scale is not None),
            ("split", self.split is not None),
            ("batch", len(self.batch) > 0),
            ("packed", self.offsets is not None),
            ("initial-state", self.initial),
        )
        tags += [tag for tag, on in flags if on]
        if self.rotary:
            tags.append(f"rotary-{self.rotary}")
        return sorted({*tags, *self.tags})


KERNEL_CONFIGS = (
    ("sympow", 1, False),
    ("sympow", 2, True),
    ("sympow", 2, False),
    ("sympow", 3, False),
    ("sympow", 4, True),
    ("sympow", 6, True),
    ("taylor", 1, False),
    ("taylor", 2, True),
    ("taylor", 3, False),
    ("relu", 1, True),
    ("relu", 1, False),
    ("identity", 1, False),
)
WEIGHT_COMBOS = (
    {},
    {"gate": True, "rotary": "half"},
    {"proportions": True, "rotary": "interleaved"},
    {"gate": True, "proportions": True},
)
SPLITS = (6, 1, 12, 9)  # for T = 13: middle, after the first token, before the last, late


def case_specs() -> list[Spec]:
    """The case set of ``CASES_VERSION``: every kernel and power with four weight/rotary combinations,
    every combination for sympow p=2, then eps, scale and edge cases."""
    specs = []
    for kernel, power, normalize in KERNEL_CONFIGS:
        for combo in WEIGHT_COMBOS:
            specs.append(Spec(kernel, power, normalize, **combo))
    covered = {(c.get("gate", False), c.get("proportions", False), c.get("rotary")) for c in WEIGHT_COMBOS}
    for gate in (False, True):
        for proportions in (False, True):
            for rotary in (None, "half", "interleaved"):
                if (gate, proportions, rotary) not in covered:
                    specs.append(Spec("sympow", 2, True, gate=gate, proportions=proportions, rotary=rotary))
    specs += [
        Spec("sympow", 2, True, gate=True, eps=1e-3),
        Spec("sympow", 4, True, rotary="half", eps=0.5),
        Spec("relu", 1, True, proportions=True, eps=0.5),
        Spec("sympow", 2, True, gate=True, rotary="half", scale=0.7),
        Spec("taylor", 3, False, scale=0.4),
        Spec("identity", 1, False, gate=True, scale=1.3),
        Spec("relu", 1, True, special="zero-denominator", tags=("zero-denominator",)),
        Spec(
            "sympow",
            2,
            True,
            gate=True,
            proportions=True,
            rotary="half",
            batch=(2, 3),
            special="broadcast",
            tags=("broadcast",),
        ),
        Spec(
            "sympow", 2, True, gate=True, rotary="interleaved", T=70, split=33, gate_min=-4.0, tags=("long",)
        ),
        Spec("sympow", 4, True, gate=True, q_scale=4.0, tags=("magnitude",)),
        Spec("sympow", 2, True, gate=True, rotary="half", T=1, split=None, tags=("T1",)),
        Spec("relu", 1, False, proportions=True, T=2, split=1, tags=("T2",)),
        Spec("sympow", 2, True, gate=True, rotary="half", batch=(), tags=("nobatch",)),
    ]
    specs += packed_specs()
    # Spread the split points of the T = 13 cases over the start, middle and end.
    spread = []
    for index, spec in enumerate(specs):
        if spec.T == 13 and spec.split == 6:
            spec = replace(spec, split=SPLITS[index % len(SPLITS)])
        spread.append(spec)
    return spread


def packed_specs() -> list[Spec]:
    """Packed sequences (math.md 10, new in version 2): empty and one-token sequences, boundaries on and
    off multiples of 4 and 8, one sequence and one token per sequence; with initial states and without."""
    packed = dict(split=None, tags=("packed",))
    return [
        Spec("sympow", 2, True, gate=True, rotary="half", offsets=(0, 4, 4, 5, 13), **packed),
        Spec(
            "sympow",
            2,
            True,
            gate=True,
            proportions=True,
            rotary="interleaved",
            offsets=(0, 3, 8, 8, 13),
            initial=True,
            split=None,
            tags=("packed", "initial"),
        ),
        Spec(
            "taylor",
            2,
            True,
            gate=True,
            offsets=tuple(range(7)),
            initial=True,
            split=None,
            tags=("packed", "tokens"),
        ),
        Spec(
            "relu",
            1,
            True,
            proportions=True,
            rotary="half",
            offsets=(0, 13),
            initial=True,
            split=None,
            tags=("packed", "one"),
        ),
        Spec("identity", 1, False, gate=True, offsets=(0, 8, 16, 19), **packed),
        Spec(
            "sympow",
            4,
            True,
            gate=True,
            rotary="half",
            offsets=(0, 0, 7, 9, 17, 19),
            initial=True,
            split=None,
            tags=("packed", "initial"),
        ),
    ]


def exact_in_all_dtypes(x: np.ndarray) -> np.ndarray:
    """x rounded to 8 significant bits (ties to even), entries below 2^-14 in magnitude set to 0: values
    that float16, bfloat16, float32 and float64 all hold exactly (for |x| < 65504)."""
    mantissa, exponent = np.frexp(np.asarray(x, dtype=np.float64))
    rounded = np.ldexp(np.rint(np.ldexp(mantissa, SIGNIFICANT_BITS)), exponent - SIGNIFICANT_BITS)
    return np.where(np.abs(rounded) < SMALLEST, 0.0, rounded)


def case_inputs(spec: Spec, seed: int) -> dict[str, np.ndarray]:
    """The input arrays of a case, by array name (INPUT_ARRAYS), rounded by ``exact_in_all_dtypes``."""
    made = make_inputs(
        batch=spec.batch,
        T=spec.T if spec.offsets is None else spec.offsets[-1],
        d=spec.head_dim,
        e=spec.e,
        seed=seed,
        gate=spec.gate,
        gate_min=spec.gate_min,
        rotary=spec.rotary is not None,
        proportions=spec.proportions,
        q_scale=spec.q_scale,
    )
    arrays = {key: made[key] for key in ("q", "k", "v")}
    if spec.gate:
        arrays["log_gate"] = made["log_gate"]
    if spec.proportions:
        arrays["a"], arrays["b"] = made["proportions"]
    if spec.rotary:
        arrays["rotary"] = made["rotary"]
    if spec.special == "zero-denominator":
        # The first three keys are <= 0 in every coordinate: relu features vanish, Z_i = 0, y_i = 0.
        arrays["k"] = np.concatenate([-np.abs(arrays["k"][..., :3, :]), arrays["k"][..., 3:, :]], axis=-2)
    if spec.special == "broadcast":
        # batch (2, 3) as (batch, heads): grouped keys and values, per-head gates, shared rotary.
        arrays["k"], arrays["v"] = arrays["k"][:, :1], arrays["v"][:, :1]
        arrays["log_gate"] = arrays["log_gate"][0]
        arrays["b"] = arrays["b"][:, :1]
        arrays["rotary"] = arrays["rotary"][0, 0]
    return {key: exact_in_all_dtypes(value) for key, value in arrays.items()}


def _slice_tokens(arrays: dict[str, np.ndarray], start: int, stop: int | None) -> dict[str, np.ndarray]:
    token_axis = {"q": -2, "k": -2, "v": -2, "rotary": -2, "log_gate": -1, "a": -1, "b": -1}
    out = {}
    for key, value in arrays.items():
        index = [slice(None)] * value.ndim
        index[value.ndim + token_axis[key]] = slice(start, stop)
        out[key] = value[tuple(index)]
    return out


def _reference(
    spec: Spec, arrays: dict[str, np.ndarray], initial: dict[str, np.ndarray] | None = None
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(y, state arrays S, z, mu) of the float64 reference, the state as true sums. A packed spec is
    computed as the loop of separate calls on its slices (``sympow.testing.packed.per_sequence``), from
    the per-sequence states ``initial`` (true sums; None for empty ones)."""
    from ..api import attention
    from ..spec.state import State
    from .packed import per_sequence

    proportions = (arrays["a"], arrays["b"]) if "a" in arrays else None
    options = dict(
        kernel=spec.kernel, power=spec.power, scale=spec.scale, rotary_layout=spec.rotary or "half",
        normalize=spec.normalize, eps=spec.eps, form="parallel", return_state=True, backend="reference",
    )  # fmt: skip
    inputs = dict(
        q=arrays["q"], k=arrays["k"], v=arrays["v"], log_gate=arrays.get("log_gate"), proportions=proportions,
        rotary=arrays.get("rotary"),
    )  # fmt: skip
    if spec.offsets is None:
        y, state = attention(**inputs, **options)
    else:
        start = None
        if initial is not None:
            zeros = np.zeros(initial["S"].shape[:-2])
            start = State(S=initial["S"], z=initial["z"], mu=initial.get("mu"), log_scale=zeros)
        y, state = per_sequence(attention, inputs, spec.offsets, initial_state=start, **options)
    S, z = state.unscaled()
    out = {"S": np.asarray(S, dtype=np.float64), "z": np.asarray(z, dtype=np.float64)}
    if state.mu is not None:
        out["mu"] = np.asarray(state.mu, dtype=np.float64)
    return np.asarray(y, dtype=np.float64), out


def _initial_states(spec: Spec, seed: int) -> dict[str, np.ndarray]:
    """One state per sequence of a packed spec (true sums): each sequence's own call on 2 tokens of
    inputs exact in every dtype, then rounded to them too."""
    count = len(spec.offsets) - 1
    prelude = replace(spec, offsets=tuple(range(0, 2 * count + 1, 2)), initial=False)
    _, states = _reference(prelude, case_inputs(prelude, seed + 10_000))
    return {f"initial_{key}": exact_in_all_dtypes(value) for key, value in states.items()}


def build_case(spec: Spec, seed: int) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(manifest entry, arrays) of one case."""
    arrays = case_inputs(spec, seed)
    initial = _initial_states(spec, seed) if spec.initial else {}
    y, final = _reference(spec, arrays, {k.removeprefix("initial_"): v for k, v in initial.items()} or None)
    arrays["y"] = y
    arrays.update(final)
    arrays.update(initial)
    if spec.split is not None:
        if not 0 < spec.split < spec.T:
            raise ValueError(f"split must lie in 1..T-1 = {spec.T - 1}, got {spec.split} ({spec.name})")
        _, partial = _reference(spec, _slice_tokens(arrays_inputs(arrays), 0, spec.split))
        arrays.update({f"split_{key}": value for key, value in partial.items()})
    arrays = {key: np.ascontiguousarray(value, dtype="<f8") for key, value in arrays.items()}
    entry = {
        "name": spec.name,
        "seed": seed,
        "tags": spec.all_tags,
        "options": {
            "kernel": spec.kernel,
            "power": spec.power,
            "scale": spec.scale,
            "normalize": spec.normalize,
            "eps": spec.eps,
            "rotary_layout": spec.rotary or "half",
        },
        "split": spec.split,
        "batch": list(y.shape[:-2]),
        "T": int(y.shape[-2]),
        "d": spec.head_dim,
        "e": spec.e,
        "feature_size": int(arrays["z"].shape[-1]),
        "arrays": {key: list(value.shape) for key, value in arrays.items()},
    }
    if spec.offsets is not None:
        entry["cu_seqlens"] = list(spec.offsets)
    return entry, arrays


def arrays_inputs(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {key: value for key, value in arrays.items() if key in INPUT_ARRAYS}


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, array, version=(1, 0), allow_pickle=False)
    return buffer.getvalue()


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """An uncompressed .npz (as np.savez writes, readable by np.load) with fixed timestamps, in the
    given order, so that the bytes depend on the arrays alone."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        for key, array in arrays.items():
            info = zipfile.ZipInfo(f"{key}.npy", date_time=ZIP_DATE)
            info.compress_type = zipfile.ZIP_STORED
            info.external_attr = 0o644 << 16
            info.create_system = 3
            archive.writestr(info, _npy_bytes(array))


def _write_json(path: Path, document: Any) -> None:
    path.write_text(json.dumps(document, indent=1, sort_keys=True) + "\n", encoding="utf-8")


def schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a manifest ``v{N}.json``."""
    shape = {"type": "array", "items": {"type": "integer", "minimum": 0}}
    options = {
        "type": "object",
        "required": ["kernel", "power", "scale", "normalize", "eps", "rotary_layout"],
        "additionalProperties": False,
        "properties": {
            "kernel": {"enum": ["sympow", "taylor", "relu", "identity"]},
            "power": {"type": "integer", "minimum": 1, "description": "p of sympow and taylor"},
            "scale": {
                "type": ["number", "null"],
                "description": "sigma in s_ij = sigma <q~_i, k~_j>; null means d^-1/2",
            },
            "normalize": {"type": "boolean"},
            "eps": {"type": "number", "minimum": 0, "description": "added to the true denominator"},
            "rotary_layout": {"enum": ["half", "interleaved"]},
        },
    }
    array_names = [
        *INPUT_ARRAYS, "y", *STATE_ARRAYS, *(f"{prefix}_{name}" for prefix in ("split", "initial")
                                            for name in STATE_ARRAYS),
    ]  # fmt: skip
    case = {
        "type": "object",
        "required": [
            "name",
            "seed",
            "tags",
            "options",
            "split",
            "batch",
            "T",
            "d",
            "e",
            "feature_size",
            "arrays",
        ],
        "additionalProperties": False,
        "properties": {
            "name": {"type": "string", "pattern": "^[A-Za-z0-9_.-]+$"},
            "seed": {"type": "integer", "description": "seed of sympow.testing.make_inputs"},
            "tags": {"type": "array", "items": {"type": "string"}},
            "options": options,
            "split": {
                "type": ["integer", "null"],
                "description": "the state split_* is the state after this many tokens (null: none)",
            },
            "batch": {**shape, "description": "the broadcast batch shape B of the output"},
            "T": {"type": "integer", "minimum": 1},
            "d": {"type": "integer", "minimum": 1},
            "e": {"type": "integer", "minimum": 1},
            "feature_size": {"type": "integer", "description": "D' of the state"},
            "cu_seqlens": {
                "type": "array",
                "items": {"type": "integer", "minimum": 0},
                "description": (
                    "packed sequences (version 2 on): offsets 0 = o_0 <= ... <= o_N = T; the states then "
                    "have a leading axis of N, and initial_* hold each sequence's initial state"
                ),
            },
            "arrays": {
                "type": "object",
                "description": "array name -> shape; the data is '{name}/{array}.npy' in the .npz",
                "propertyNames": {"enum": array_names},
                "additionalProperties": shape,
                "required": ["q", "k", "v", "y", "S", "z"],
            },
        },
    }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "sympow conformance cases",
        "description": (
            "Manifest of a sympow conformance case set. Arrays are little-endian float64 .npy files in an "
            "uncompressed zip (.npz). See the docstring of sympow.testing.suite for the conventions."
        ),
        "type": "object",
        "required": ["format", "version", "generator", "dtype", "cases"],
        "properties": {
            "format": {"const": FORMAT},
            "version": {"type": "integer"},
            "generator": {"type": "string"},
            "dtype": {"const": "<f8"},
            "cases": {"type": "array", "items": case},
        },
    }


def generate(directory: Path | str) -> list[Path]:
    """Write ``v{CASES_VERSION}.npz``, ``v{CASES_VERSION}.json`` and ``schema.json`` into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    entries, stored = [], {}
    for seed, spec in enumerate(case_specs()):
        entry, arrays = build_case(spec, seed)
        if any(other["name"] == entry["name"] for other in entries):
            raise ValueError(f"two cases are named {entry['name']!r}")
        entries.append(entry)
        stored.update({f"{entry['name']}/{key}": value for key, value in arrays.items()})
    manifest = {
        "format": FORMAT,
        "version": CASES_VERSION,
        "generator": "python -m sympow.testing.generate_cases",
        "dtype": "<f8",
        "cases": entries,
    }
    paths = [
        directory / f"v{CASES_VERSION}.npz",
        directory / f"v{CASES_VERSION}.json",
        directory / "schema.json",
    ]
    write_npz(paths[0], stored)
    _write_json(paths[1], manifest)
    _write_json(paths[2], schema())
    return paths


def default_directory() -> Path:
    return Path(__file__).resolve().parent / "cases"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sympow.testing.generate_cases",
        description="Regenerate the sympow conformance cases (deterministic, byte for byte).",
    )
    parser.add_argument("--out", type=Path, default=default_directory(), help="output folder")
    args = parser.parse_args(argv)
    for path in generate(args.out):
        print(f"wrote {path} ({path.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
