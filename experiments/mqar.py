"""MQAR accuracy against the number of key-value pairs at a fixed model width: Based, ReBased, softmax.

Claim (Aksenov et al., 2024, ReBased, Figure 1 and Table 1): at a fixed width, ReBased recalls more
than Based as the number of pairs approaches what the state holds; softmax attention recalls them all.

The default feature dimension is 4 (D' = 1 + 4 + 10 = 15 features per head), which puts the capacity
edge within N <= 16 at T = 64; at Based's own 16 (D' = 153) both kernels recall every N <= 16
(``--feature-dim 16``, results/mqar_feature16.*).

    python -m experiments.mqar                     # the defaults below, 11 minutes on 2 cores
    python -m experiments.mqar --tiny              # seconds: the CI smoke run
    python -m experiments.mqar --pairs 4 8 16 32 --seq-len 128 --steps 3000 --seeds 0 1 2 3 4

Writes results/mqar.csv (one row per mixer, pairs and seed) and results/mqar.png (mean accuracy over
seeds, the band from the worst to the best seed).
"""

from __future__ import annotations

from typing import Any

from .runner import Job, Timer, arguments, plot_lines, print_table, run_jobs, summarise, train, write_csv

MIXERS = ("based", "rebased", "softmax")


def build(mixer: str, vocab: int, hidden: int, layers: int, heads: int, feature_dim: int) -> Any:
    from sympow.nn import LanguageModel

    options = {"feature_dim": feature_dim} if mixer in ("based", "rebased") else {}
    return LanguageModel(vocab, hidden, layers, heads, mixer=mixer, mixer_options=options)


def accuracy(model: Any, inputs: Any, labels: Any) -> float:
    """Fraction of labelled positions whose argmax is the label."""
    import torch

    model.eval()
    with torch.no_grad():
        predicted = model(inputs).argmax(-1)
    labelled = labels != -100
    return float((predicted[labelled] == labels[labelled]).float().mean())


def one_run(
    *,
    mixer: str,
    num_pairs: int,
    seed: int,
    steps: int,
    lr: float,
    batch: int,
    seq_len: int,
    vocab: int,
    hidden: int,
    layers: int,
    heads: int,
    feature_dim: int,
    alpha: float,
    assignments: int | None = None,
    eval_examples: int = 1000,
) -> list[dict[str, Any]]:
    """Train one model on fresh MQAR batches and measure its accuracy on held-out examples."""
    import numpy as np
    import torch

    from .tasks import mqar

    torch.manual_seed(seed)
    model = build(mixer, vocab, hidden, layers, heads, feature_dim)
    task = dict(seq_len=seq_len, vocab_size=vocab, num_pairs=num_pairs, alpha=alpha, assignments=assignments)

    def batches(step: int) -> tuple[Any, Any]:
        rng = np.random.default_rng([seed, step])
        return tuple(torch.from_numpy(a) for a in mqar(rng, batch, **task))

    timer = Timer()
    losses = train(model, batches, steps=steps, lr=lr)
    held_out_rng = np.random.default_rng([10_000 + seed])
    held_out = [torch.from_numpy(a) for a in mqar(held_out_rng, eval_examples, **task)]
    return [{
        "mixer": mixer, "num_pairs": num_pairs, "seed": seed, "accuracy": accuracy(model, *held_out),
        "final_loss": sum(losses[-20:]) / len(losses[-20:]), "steps": steps, "lr": lr, "seconds": timer(),
    }]  # fmt: skip


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = arguments(__doc__.splitlines()[0], seeds=3, lr=3e-3, steps=600)
    parser.add_argument("--pairs", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--mixers", nargs="+", default=list(MIXERS), choices=MIXERS)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--vocab", type=int, default=128)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--feature-dim", type=int, default=4)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--alpha", type=float, default=0.1, help="power-law exponent of the query gaps")
    args = parser.parse_args(argv)
    if args.tiny:
        args.pairs, args.seeds, args.steps, args.seq_len, args.vocab = [2], [0], 2, 16, 32
        args.hidden, args.batch, args.feature_dim = 16, 4, 4
    eval_examples = 16 if args.tiny else 1000
    jobs = [
        Job(
            one_run,
            dict(
                mixer=mixer,
                num_pairs=pairs,
                seed=seed,
                steps=args.steps,
                lr=args.lr,
                batch=args.batch,
                seq_len=args.seq_len,
                vocab=args.vocab,
                hidden=args.hidden,
                layers=args.layers,
                heads=args.heads,
                feature_dim=args.feature_dim,
                alpha=args.alpha,
                eval_examples=eval_examples,
            ),
            label=f"{mixer} N={pairs} seed {seed}",
        )
        for pairs in args.pairs
        for mixer in args.mixers
        for seed in args.seeds
    ]
    rows = run_jobs(jobs, args.workers, "MQAR")
    name = "mqar_tiny" if args.tiny else "mqar"
    write_csv(rows, args.out / f"{name}.csv")
    summary = summarise(rows, ("mixer", "num_pairs"), "accuracy")
    print_table(summary, "MQAR accuracy over seeds")
    plot_lines(summary, x="num_pairs", line="mixer", path=args.out / f"{name}.png", xlabel="key-value pairs",
               ylabel="accuracy", title=f"MQAR, width {args.hidden}, T = {args.seq_len}")  # fmt: skip
    return rows


if __name__ == "__main__":
    main()
