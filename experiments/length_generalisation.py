"""Loss by position past the training context: sympow with fixed rotary, gated sympow, conformal-sympow.

Claim (Kumar et al., 2025, conformal-sympow, Figures 1 and 4): trained at a short context, ungated sympow
degrades past it, while gated sympow and conformal-sympow stay flat.

A byte-level language model (256 tokens) on the Python standard library's own sources, read from the
running interpreter (``tasks.stdlib_text``: nothing is downloaded); the last tenth of the bytes is held
out. Trained on windows of ``--train-context`` bytes, evaluated on held-out windows of ``--eval-context``
bytes, the loss averaged over windows and over bins of ``--bin`` positions.

    python -m experiments.length_generalisation             # the defaults, 8 minutes on 2 cores
    python -m experiments.length_generalisation --tiny      # seconds: the CI smoke run
    python -m experiments.length_generalisation --steps 3000 --eval-context 4096 --seeds 0 1 2

Writes results/length_generalisation.csv (one row per model, seed and position bin) and
results/length_generalisation.png (mean loss by position over seeds, the band from min to max).
"""

from __future__ import annotations

from typing import Any

from .runner import Job, Timer, arguments, plot_lines, print_table, run_jobs, summarise, train, write_csv

MODELS: dict[str, dict[str, Any]] = {
    "sympow (fixed rotary)": {"rotary": "fixed"},
    "gated sympow (fixed rotary)": {"gating": True, "rotary": "fixed"},
    "conformal-sympow": {"gating": True, "rotary": "conformal"},
}


def one_run(
    *, model_name: str, seed: int, steps: int, lr: float, batch: int, train_context: int, eval_context: int,
    eval_windows: int, bin_size: int, hidden: int, layers: int, heads: int, power: int, text_bytes: int,
) -> list[dict[str, Any]]:  # fmt: skip
    import numpy as np
    import torch

    from sympow.nn import LanguageModel

    from .tasks import byte_windows, stdlib_text

    text = np.frombuffer(stdlib_text(text_bytes), dtype=np.uint8)
    split = text.shape[0] * 9 // 10
    train_text, held_out = text[:split], text[split:]
    options = dict(MODELS[model_name], power=power)
    if options.get("rotary") == "conformal":
        options["max_length"] = eval_context
    torch.manual_seed(seed)
    model = LanguageModel(256, hidden, layers, heads, mixer="sympow", mixer_options=options)

    def batches(step: int) -> tuple[Any, Any]:
        window = torch.from_numpy(byte_windows(train_text, np.random.default_rng([seed, step]), batch,
                                               train_context))  # fmt: skip
        return window[:, :-1], window[:, 1:]

    timer = Timer()
    losses = train(model, batches, steps=steps, lr=lr)
    windows = torch.from_numpy(
        byte_windows(held_out, np.random.default_rng(12345), eval_windows, eval_context)
    )
    model.eval()
    with torch.no_grad():
        logits = model(windows[:, :-1], form="chunked", chunk_size=64)
        per_token = torch.nn.functional.cross_entropy(
            logits.transpose(1, 2), windows[:, 1:], reduction="none"
        )
    by_position = per_token.mean(0)
    rows = []
    for start in range(0, eval_context, bin_size):
        rows.append({
            "model": model_name, "seed": seed, "position": start + bin_size,
            "loss": float(by_position[start : start + bin_size].mean()),
            "train_loss": sum(losses[-20:]) / len(losses[-20:]), "steps": steps, "lr": lr,
            "seconds": timer(),
        })  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = arguments(__doc__.splitlines()[0], seeds=3, lr=3e-3, steps=800)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--train-context", type=int, default=128)
    parser.add_argument("--eval-context", type=int, default=1024)
    parser.add_argument("--eval-windows", type=int, default=32)
    parser.add_argument("--bin", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--power", type=int, default=2)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--text-bytes", type=int, default=8_000_000, help="bytes of the stdlib sources")
    args = parser.parse_args(argv)
    if args.tiny:
        args.seeds, args.steps, args.train_context, args.eval_context = [0], 2, 16, 64
        args.eval_windows, args.bin, args.hidden, args.batch, args.text_bytes = 2, 16, 16, 2, 100_000
    jobs = [
        Job(one_run, dict(model_name=name, seed=seed, steps=args.steps, lr=args.lr, batch=args.batch,
                          train_context=args.train_context, eval_context=args.eval_context,
                          eval_windows=args.eval_windows, bin_size=args.bin, hidden=args.hidden,
                          layers=args.layers, heads=args.heads, power=args.power,
                          text_bytes=args.text_bytes),
            label=f"{name} seed {seed}")
        for name in args.models for seed in args.seeds
    ]  # fmt: skip
    rows = run_jobs(jobs, args.workers, "length generalisation")
    name = "length_generalisation_tiny" if args.tiny else "length_generalisation"
    write_csv(rows, args.out / f"{name}.csv")
    summary = summarise(rows, ("model", "position"), "loss")
    inside = [row for row in summary if row["position"] <= args.train_context]
    last = max(row["position"] for row in summary)
    print_table([row for row in summary if row["position"] in (inside[-1]["position"], last)],
                f"held-out loss (nats per byte) at the training context and at {last}")  # fmt: skip
    plot_lines(summary, x="position", line="model", path=args.out / f"{name}.png",
               xlabel="position (end of bin)", ylabel="held-out loss, nats per byte",
               title=f"trained at context {args.train_context}")  # fmt: skip
    return rows


if __name__ == "__main__":
    main()
