"""Training-step throughput per method, EMAE batched vs looped, mimray MAE vs a reference MAE.

    python benchmarks/step_throughput.py [--batch 64] [--steps 8] [--rounds 5]

One process, one fixed small config. A "step" is forward + backward + AdamW update on a fixed
batch. Candidates and their baselines run in alternating rounds and the median round is
reported, so machine noise hits both sides alike; compare the ratios, not absolute figures.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from reference_mae import ReferenceMAE
from rich.console import Console
from rich.table import Table

from orchestrator.config import load_spec
from workloads.methods import method_names
from workloads.pretrain import build_model

MODEL = {
    "img_size": 32,
    "patch_size": 4,
    "embed_dim": 96,
    "depth": 4,
    "num_heads": 3,
    "decoder_dim": 64,
    "decoder_depth": 2,
    "decoder_num_heads": 4,
}


def step_fn(
    model: torch.nn.Module, loss_of: Callable[[torch.Tensor], torch.Tensor], imgs: torch.Tensor
) -> Callable[[], None]:
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step() -> None:
        loss = loss_of(imgs)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        hook = getattr(model, "after_optimizer_step", None)
        if hook is not None:
            hook(0.5)

    return step


def images_per_s(step: Callable[[], None], batch: int, steps: int) -> float:
    started = time.perf_counter()
    for _ in range(steps):
        step()
    return batch * steps / (time.perf_counter() - started)


def race(
    candidates: dict[str, Callable[[], None]], batch: int, steps: int, rounds: int
) -> dict[str, float]:
    """Median images/s of each candidate over alternating rounds (after one warm-up step)."""
    for step in candidates.values():
        step()
    samples: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(rounds):
        for name, step in candidates.items():
            samples[name].append(images_per_s(step, batch, steps))
    return {name: statistics.median(values) for name, values in samples.items()}


def method_model(name: str) -> torch.nn.Module:
    spec = load_spec(None, [f"model.{k}={v}" for k, v in MODEL.items()] + [f"method.name={name}"])
    return build_model(spec.model_dump(mode="json"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    imgs = torch.randn(args.batch, 3, MODEL["img_size"], MODEL["img_size"])
    console = Console()
    console.print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"batch {args.batch}, {args.steps} steps x {args.rounds} rounds, model {MODEL}"
    )

    methods = {name: method_model(name) for name in method_names()}
    per_method = race(
        {name: step_fn(m, lambda x, m=m: m(x).loss, imgs) for name, m in methods.items()},
        args.batch,
        args.steps,
        args.rounds,
    )
    table = Table("method", "images/s (train step)")
    for name, speed in per_method.items():
        table.add_row(name, f"{speed:.0f}")
    console.print(table)

    emae = methods["emae"]
    emae_speeds = race(
        {
            "batched": step_fn(emae, lambda x: emae(x).loss, imgs),
            "loop": step_fn(emae, lambda x: emae.forward_loop(x).loss, imgs),
        },
        args.batch,
        args.steps,
        args.rounds,
    )
    console.print(
        f"EMAE (K={emae.k}) one batched forward vs a loop over parts: "
        f"{emae_speeds['batched']:.0f} vs {emae_speeds['loop']:.0f} images/s, "
        f"ratio {emae_speeds['batched'] / emae_speeds['loop']:.2f}x"
    )

    reference = ReferenceMAE(
        MODEL["img_size"],
        MODEL["patch_size"],
        MODEL["embed_dim"],
        MODEL["depth"],
        MODEL["num_heads"],
        MODEL["decoder_dim"],
        MODEL["decoder_depth"],
        MODEL["decoder_num_heads"],
    )
    mae = methods["mae"]
    mae_speeds = race(
        {
            "mimray": step_fn(mae, lambda x: mae(x).loss, imgs),
            "reference": step_fn(reference, reference, imgs),
        },
        args.batch,
        args.steps,
        args.rounds,
    )
    console.print(
        f"MAE step, mimray vs reference re-implementation: "
        f"{mae_speeds['mimray']:.0f} vs {mae_speeds['reference']:.0f} images/s, "
        f"ratio {mae_speeds['mimray'] / mae_speeds['reference']:.2f}x"
    )


if __name__ == "__main__":
    main()
