r"""The data of the experiments: multi-query associative recall (MQAR) and byte-level text.

MQAR (Arora et al., 2023, "Zoology: measuring and improving recall in efficient language models"): a
sequence of T tokens opens with N key-value pairs k_1 v_1 ... k_N v_N, keys drawn without replacement
from the first half of the vocabulary [1, V/2) and values from the second [V/2, V) (token 0 is the
filler). Each key is then queried once, in random order, at a position 2N - 1 + g after the pairs with
the gap g in 1 .. T - 2N drawn with probability proportional to g^(alpha - 1) (a power law; small alpha
puts the queries near the pairs), the positions distinct. The label at a query position is the value
paired with that key; every other position is unlabelled (-100, ignored by the loss).

With ``assignments = A > N`` the opening holds A pairs over N distinct keys, every key at least once,
and the answer to a query is the value of that key's last assignment: recall that must prefer the most
recent of several matching keys (the position-dependent concentration of LeaPformer).
"""

from __future__ import annotations

import sysconfig
from pathlib import Path

import numpy as np

IGNORE = -100  # the label of an unlabelled position (torch's cross_entropy ignore_index)


def mqar(
    rng: np.random.Generator,
    batch: int,
    *,
    seq_len: int,
    vocab_size: int,
    num_pairs: int,
    alpha: float = 0.1,
    assignments: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(inputs [batch, seq_len] int64, labels [batch, seq_len] int64); see the module docstring."""
    assignments = num_pairs if assignments is None else assignments
    half = vocab_size // 2
    if num_pairs < 1 or assignments < num_pairs:
        raise ValueError(f"need 1 <= num_pairs <= assignments, got {num_pairs} and {assignments}")
    if num_pairs > half - 1 or assignments > vocab_size - half:
        raise ValueError(
            f"vocab_size {vocab_size} holds at most {half - 1} keys and {vocab_size - half} values"
        )
    space = seq_len - 2 * assignments
    if space < num_pairs:
        raise ValueError(f"seq_len {seq_len} leaves {space} positions for {num_pairs} queries")
    if alpha <= 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    gaps = np.arange(1, space + 1, dtype=np.float64)
    gap_probability = gaps ** (alpha - 1.0)
    gap_probability /= gap_probability.sum()

    inputs = np.zeros((batch, seq_len), dtype=np.int64)
    labels = np.full((batch, seq_len), IGNORE, dtype=np.int64)
    for b in range(batch):
        keys = rng.choice(np.arange(1, half), size=num_pairs, replace=False)
        # every key once, the rest of the assignments to random keys, in random order
        assigned = np.concatenate([keys, rng.choice(keys, size=assignments - num_pairs)])
        rng.shuffle(assigned)
        values = rng.choice(np.arange(half, vocab_size), size=assignments, replace=False)
        inputs[b, 0 : 2 * assignments : 2], inputs[b, 1 : 2 * assignments : 2] = assigned, values
        latest = {int(key): int(value) for key, value in zip(assigned, values, strict=True)}
        positions = 2 * assignments - 1 + rng.choice(gaps.astype(np.int64), size=num_pairs, replace=False,
                                                     p=gap_probability)  # fmt: skip
        queried = rng.permutation(keys)
        inputs[b, positions] = queried
        labels[b, positions] = [latest[int(key)] for key in queried]
    return inputs, labels


def query_gaps(inputs: np.ndarray, labels: np.ndarray, assignments: int) -> np.ndarray:
    """The gaps g = position - (2 A - 1) of every labelled position (for the tests of the distribution)."""
    _, positions = np.nonzero(labels != IGNORE)
    return positions - (2 * assignments - 1)


def stdlib_text(limit: int | None = None) -> bytes:
    """The Python standard library's own ``.py`` sources, read from the running interpreter, sorted by
    path and joined by newlines (every machine with Python has them; nothing is downloaded). ``limit``
    caps the number of bytes."""
    root = Path(sysconfig.get_paths()["stdlib"])
    chunks, size = [], 0
    for path in sorted(root.rglob("*.py")):
        if "site-packages" in path.parts or "test" in path.parts:
            continue
        data = path.read_bytes()
        chunks.append(data)
        size += len(data) + 1
        if limit is not None and size >= limit:
            break
    text = b"\n".join(chunks)
    return text if limit is None else text[:limit]


def byte_windows(text: np.ndarray, rng: np.random.Generator, batch: int, length: int) -> np.ndarray:
    """``batch`` random windows of ``length + 1`` consecutive bytes of ``text`` (uint8 [n]) as int64."""
    starts = rng.integers(0, text.shape[0] - length - 1, size=batch)
    return np.stack([text[s : s + length + 1] for s in starts]).astype(np.int64)
