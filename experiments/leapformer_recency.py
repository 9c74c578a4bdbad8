"""Recall of the latest value of re-assigned keys: LeaPformer against plain relu linear attention.

Claim (Agostinelli et al., 2024, LeaPformer, sections 3 and 5): learned proportions re-weight attention
by cos(pi/2 (a_i - b_j)), a position-dependent concentration that plain linear attention lacks, and
improve on it. The task needs exactly that: MQAR whose opening assigns ``--keys`` keys ``--assignments``
times in all (every key at least once), the answer to a query being the key's latest value
(``tasks.mqar`` with ``assignments``). Softmax attention is run beside them as the reference of what
the task allows at this width. Both linear layers get the short causal convolution of Based
(``--conv-size 3``): without it none of the three models learned even plain recall in 600 steps
(results/leapformer_recency_noconv.*, ``--conv-size 0``), as in the MQAR run where only the convolved
Based and ReBased did.

    python -m experiments.leapformer_recency                # the defaults, 9 minutes on 2 cores
    python -m experiments.leapformer_recency --tiny         # seconds: the CI smoke run

Writes results/leapformer_recency.csv (one row per model and seed) and results/leapformer_recency.png
(accuracy against the number of assignments per key).
"""

from __future__ import annotations

from typing import Any

from .mqar import accuracy
from .runner import Job, Timer, arguments, plot_lines, print_table, run_jobs, summarise, train, write_csv

MODELS: dict[str, tuple[str, dict[str, Any]]] = {
    "leapformer": ("leapformer", {}),
    "relu linear attention": ("leapformer", {"learned_proportions": False}),
    "softmax": ("softmax", {}),
}
CONVOLVED = ("leapformer", "relu linear attention")  # the layers that take ``--conv-size``


def one_run(
    *, model_name: str, seed: int, steps: int, lr: float, batch: int, seq_len: int, vocab: int, keys: int,
    assignments: int, hidden: int, layers: int, heads: int, alpha: float, eval_examples: int,
    conv_size: int,
) -> list[dict[str, Any]]:  # fmt: skip
    import numpy as np
    import torch

    from sympow.nn import LanguageModel

    from .tasks import mqar

    mixer, options = MODELS[model_name]
    if model_name in CONVOLVED:
        options = {**options, "conv_size": conv_size}
    torch.manual_seed(seed)
    model = LanguageModel(vocab, hidden, layers, heads, mixer=mixer, mixer_options=options)
    task = dict(seq_len=seq_len, vocab_size=vocab, num_pairs=keys, assignments=assignments, alpha=alpha)

    def batches(step: int) -> tuple[Any, Any]:
        return tuple(torch.from_numpy(a) for a in mqar(np.random.default_rng([seed, step]), batch, **task))

    timer = Timer()
    losses = train(model, batches, steps=steps, lr=lr)
    held_out = [torch.from_numpy(a) for a in mqar(np.random.default_rng([10_000 + seed]), eval_examples,
                                                   **task)]  # fmt: skip
    return [{
        "model": model_name, "keys": keys, "assignments": assignments,
        "per_key": assignments / keys, "seed": seed, "accuracy": accuracy(model, *held_out),
        "final_loss": sum(losses[-20:]) / len(losses[-20:]), "steps": steps, "lr": lr, "seconds": timer(),
    }]  # fmt: skip


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = arguments(__doc__.splitlines()[0], seeds=3, lr=3e-3, steps=600)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--keys", type=int, default=6)
    parser.add_argument("--assignments", type=int, nargs="+", default=[6, 18])
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--vocab", type=int, default=128)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--alpha", type=float, default=0.1)
    parser.add_argument("--conv-size", type=int, default=3, help="short convolution of the linear layers")
    args = parser.parse_args(argv)
    if args.tiny:
        args.seeds, args.steps, args.seq_len, args.vocab, args.keys = [0], 2, 24, 32, 2
        args.assignments, args.hidden, args.batch = [4], 16, 4
    jobs = [
        Job(one_run, dict(model_name=name, seed=seed, steps=args.steps, lr=args.lr, batch=args.batch,
                          seq_len=args.seq_len, vocab=args.vocab, keys=args.keys, assignments=assignments,
                          hidden=args.hidden, layers=args.layers, heads=args.heads, alpha=args.alpha,
                          eval_examples=16 if args.tiny else 1000, conv_size=args.conv_size),
            label=f"{name} A={assignments} seed {seed}")
        for assignments in args.assignments for name in args.models for seed in args.seeds
    ]  # fmt: skip
    rows = run_jobs(jobs, args.workers, "LeaPformer recency")
    name = "leapformer_recency_tiny" if args.tiny else "leapformer_recency"
    write_csv(rows, args.out / f"{name}.csv")
    summary = summarise(rows, ("model", "per_key"), "accuracy")
    print_table(summary, "accuracy on the latest value, over seeds")
    plot_lines(summary, x="per_key", line="model", path=args.out / f"{name}.png",
               xlabel="assignments per key", ylabel="accuracy",
               title=f"re-assigned MQAR, {args.keys} keys, T = {args.seq_len}")  # fmt: skip
    return rows


if __name__ == "__main__":
    main()
