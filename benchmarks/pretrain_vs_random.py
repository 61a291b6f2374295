"""Does pretraining help at toy scale? MAE and EMAE encoders against a random-init encoder.

    python benchmarks/pretrain_vs_random.py [--source shapes|digits|colors] [--methods mae emae]
        [--seeds 0 1 2] [--epochs 10] [--images 1500] [--crop-scale 0.2 1.0] [--jobs 3]
        [--states DIR] [--out results.json]

For each seed: pretrain every method in-process on a built-in dataset for the same number of
epochs (same data, same schedule), then evaluate its encoder, and a randomly initialised
encoder of the same architecture (init seed = the seed), with the same protocols and settings:

- kNN on frozen mean-pooled features of all train images: weighted top-1 with k=20, and 1-NN;
- linear probe (BatchNorm without affine + Linear, MAE's LARS recipe; `--probe-blr`, default
  MAE's 0.1, which small sets need far larger: see `linear_probe_recipe.py`) on the same
  frozen features;
- fine-tuning of the whole encoder with 10% of the train labels (the first 10% of images).

The table holds mean ± std over seeds per row, and the pretrain wall time per method.
Accuracies are on held-out val images. No Ray (Ray Train's worker start-up would eat the
budget): the pretrain step is the one of `workloads.pretrain.train_loop_per_worker`
(normalised input, AdamW with selective decay, warmup + cosine on the scaled lr, the model's
step hook). Pretraining batches get mimray's augmentation: `--crop-scale` (RandomResizedCrop
from the rendered pixels, as `data.crop_scale`; default none) and a flip (`--no-hflip`).
`--images 0` / `--val-images 0` take whole splits (digits: 1,438 / 359). `--states DIR` keeps
the pretrained states, so evaluation settings can be compared on the same encoders. Seeds
run in `--jobs` processes of `--threads` torch threads each: on a small CPU shared with other
work, one thread per process ran 4-5x faster than two (oversubscribed intra-op threads spin).
Progress goes to stderr.

What it found on `shapes` (ViT dim 128, depth 4, 16 patches of 8x8 on 32x32 images, 1500
train and 500 val images, 10 pretrain epochs over 3 seeds; MAE-only runs of 20 and 40 epochs;
single-seed exploration of patch 8 on 32x32 and patch 4 on 16x16, 2000 images, mean and cls
pooling, fine-tune blr 1e-3 and 1e-2): pretraining did not help in any protocol. Pretrained
encoders scored at or below the random-init encoder on kNN, linear probe and 10%-label
fine-tuning, all between 0.09 and 0.20, while kNN on raw pixels gets 0.27; a likely reason is
that mean-pooled features of a small ViT lose the layout that tells shapes apart.

What it found on `digits` (one seed, dim 128, depth 4, patch 4, blr 1.5e-3, 30 epochs,
batch 64, crop 0.2-1 + flip; kNN / linear / fine-tune 10% top-1, MAE vs random init):
32 px (64 tokens): kNN 0.641 random, MAE not finished (18 s/epoch on the busy machine);
16 px (16 tokens, ~6 s/epoch): 0.822 vs 0.618, linear 0.908 vs 0.855, fine-tune at blr 1e-2
0.607 vs 0.515, at blr 1e-3 0.448 vs 0.304. That is the `mae-vs-random` preset's protocol
(see the README), which runs it through mimray itself.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from workloads.data.base import Augmentation
from workloads.data.builtin import BuiltinSource
from workloads.data.decode import augment_pixels
from workloads.data.registry import source_for
from workloads.evaluation.heads import Pool, load_encoder
from workloads.evaluation.protocols import extract_features, finetune, knn_metrics, linear_probe
from workloads.methods import get_method
from workloads.model_input import to_model_input
from workloads.optim import build_optimizer, set_lr
from workloads.schedule import lr_at, scaled_lr

CPU = torch.device("cpu")
COLUMNS = {
    "knn/top1": "kNN top-1 (k=20)",
    "knn/top1_1nn": "1-NN top-1",
    "linear/top1": "linear probe top-1",
    "finetune/top1": "fine-tune 10% top-1",
}
Data = tuple[torch.Tensor, torch.Tensor]  # uint8 images (N, H, W, 3), int64 labels (N,)


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def builtin(name: str) -> BuiltinSource:
    source = source_for(name)
    if not isinstance(source, BuiltinSource):
        raise SystemExit(f"--source {name}: only built-in datasets are measured here")
    return source


def load_split(name: str, split: str, count: int | None, img_size: int) -> Data:
    """A built-in split as mimray reads it for evaluation: whole images, generation seed 0.
    `count` None takes the whole split (fixed-size sets such as digits)."""
    source = builtin(name)
    images, labels = source.load(source.split_indices(split, count), img_size, 0)
    return torch.as_tensor(images), torch.as_tensor(labels)


def batches(images: torch.Tensor, labels: torch.Tensor, size: int) -> list[Data]:
    return [(images[i : i + size], labels[i : i + size]) for i in range(0, len(labels), size)]


def augmented(images: torch.Tensor, args: argparse.Namespace) -> torch.Tensor:
    """MAE's pretraining augmentation as mimray's stream applies it (`data.crop_scale`,
    `data.hflip`): RandomResizedCrop from the rendered pixels, then a flip."""
    crop = None if args.crop_scale is None else tuple(args.crop_scale)
    if crop is None and not args.hflip:
        return images
    augmentation = Augmentation(crop_scale=crop, hflip=args.hflip)
    rng = np.random.default_rng()
    return torch.as_tensor(augment_pixels(images.numpy(), args.img_size, augmentation, rng))


def pretrain(
    method_name: str,
    model_spec: dict[str, Any],
    images: torch.Tensor,
    args: argparse.Namespace,
    seed: int,
    on_epoch: Callable[[int, torch.nn.Module], None] | None = None,
) -> tuple[dict[str, torch.Tensor], float]:
    """The method's model trained on `images`; returns its state dict and the wall time."""
    torch.manual_seed(seed)
    method = get_method(method_name)
    knobs = {"name": method_name, **({"k": args.k} if method_name == "emae" else {})}
    model = method.build(model_spec, method.knobs.model_validate(knobs))
    peak_lr = scaled_lr(args.blr, args.batch_size)
    optimizer = build_optimizer(model, lr=peak_lr, weight_decay=0.05)
    steps_per_epoch = len(images) // args.batch_size
    total_steps, warmup_steps = steps_per_epoch * args.epochs, steps_per_epoch * args.warmup_epochs
    step_hook = getattr(model, "after_optimizer_step", None)
    order = torch.Generator().manual_seed(seed)
    started, step = time.perf_counter(), 0
    for epoch in range(args.epochs):
        model.train()
        losses = []
        permutation = torch.randperm(len(images), generator=order)
        for index in permutation[: steps_per_epoch * args.batch_size].split(args.batch_size):
            set_lr(optimizer, lr_at(step, total_steps, warmup_steps, peak_lr))
            out = model(to_model_input(augmented(images[index], args), CPU))
            optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            optimizer.step()
            if step_hook is not None:
                step_hook(step / max(1, total_steps))
            losses.append(out.loss.item())
            step += 1
        if (epoch + 1) % max(1, args.epochs // 5) == 0 or epoch + 1 == args.epochs:
            say(
                f"  {method_name} seed {seed} epoch {epoch + 1}/{args.epochs} "
                f"loss {statistics.fmean(losses):.4f} ({time.perf_counter() - started:.0f} s)"
            )
        if on_epoch is not None:
            on_epoch(epoch + 1, model)
    return model.state_dict(), time.perf_counter() - started


def evaluate(
    model_spec: dict[str, Any],
    state: dict[str, torch.Tensor] | None,
    train: Data,
    val: Data,
    args: argparse.Namespace,
    seed: int,
    pool: Pool,
) -> dict[str, float]:
    """kNN, linear probe and 10%-label fine-tune of the encoder in `state` (None: random)."""
    num_classes = len(builtin(args.source).class_names)
    encoder = load_encoder(model_spec, state, init_seed=seed)
    train_features = extract_features(encoder, batches(*train, 256), pool, CPU)
    val_features = extract_features(encoder, batches(*val, 256), pool, CPU)
    metrics = knn_metrics(train_features, val_features, num_classes, k=args.knn_k, temperature=0.07)
    linear = {
        "epochs": args.probe_epochs,
        "batch_size": args.probe_batch,
        "blr": args.probe_blr,
        "weight_decay": 0.0,
        "warmup_epochs": args.probe_warmup_epochs,
    }
    metrics.update(linear_probe(train_features, val_features, num_classes, linear, seed=seed))
    if args.finetune_epochs:
        metrics.update(finetune_few_labels(model_spec, state, train, val, args, seed, pool))
    return metrics


def finetune_few_labels(
    model_spec: dict[str, Any],
    state: dict[str, torch.Tensor] | None,
    train: Data,
    val: Data,
    args: argparse.Namespace,
    seed: int,
    pool: Pool,
) -> dict[str, float]:
    count = max(args.finetune_batch, round(len(train[1]) * args.label_fraction))
    images, labels = train[0][:count], train[1][:count]
    order = torch.Generator().manual_seed(seed)

    def train_epoch(epoch: int) -> list[Data]:
        permutation = torch.randperm(count, generator=order)
        return batches(images[permutation], labels[permutation], args.finetune_batch)

    # `finetune` scores val after every epoch; only the last score is reported, so the
    # earlier passes get no batches (they read 0) and cost nothing.
    val_calls = iter(range(args.finetune_epochs, 0, -1))

    def val_epoch() -> list[Data]:
        return batches(*val, 256) if next(val_calls) == 1 else []

    settings = {
        "epochs": args.finetune_epochs,
        "blr": args.finetune_blr,
        "layer_decay": 0.75,
        "weight_decay": 0.05,
        "warmup_epochs": 1,
        "label_smoothing": 0.1,
        "hflip": True,  # drawn inside `finetune`, from the seed
    }
    return finetune(
        load_encoder(model_spec, state, init_seed=seed),
        train_epoch,
        val_epoch,
        len(builtin(args.source).class_names),
        settings,
        steps_per_epoch=count // args.finetune_batch,
        global_batch_size=args.finetune_batch,
        device=CPU,
        pool=pool,
        seed=seed,
    )


def mean_std(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.3f} ± {spread:.3f}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--methods", nargs="+", default=["mae", "emae"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=10, help="pretraining epochs")
    parser.add_argument("--source", default="shapes", help="a built-in: shapes, digits, ...")
    parser.add_argument("--images", type=int, default=1500, help="train images (0: all)")
    parser.add_argument("--val-images", type=int, default=500, help="val images (0: all)")
    parser.add_argument(
        "--crop-scale",
        type=float,
        nargs=2,
        default=None,
        help="RandomResizedCrop area share, e.g. 0.2 1.0 (default: no crop, as measured before)",
    )
    parser.add_argument("--no-hflip", dest="hflip", action="store_false")
    parser.add_argument("--knn-k", type=int, default=20)
    parser.add_argument("--decoder-dim", type=int, default=128)
    parser.add_argument("--img-size", type=int, default=32)
    parser.add_argument("--patch-size", type=int, default=8)
    parser.add_argument("--embed-dim", type=int, default=128)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--num-heads", type=int, default=4)
    parser.add_argument("--k", type=int, default=4, help="EMAE parallel parts")
    parser.add_argument("--batch-size", type=int, default=64, help="pretraining batch")
    parser.add_argument("--blr", type=float, default=1.5e-4, help="pretraining base lr")
    parser.add_argument("--warmup-epochs", type=int, default=2)
    parser.add_argument("--pool", choices=["mean", "cls"], default="mean")
    parser.add_argument("--probe-epochs", type=int, default=90, help="linear-probe epochs")
    parser.add_argument("--probe-warmup-epochs", type=float, default=10)
    parser.add_argument("--probe-batch", type=int, default=256)
    parser.add_argument("--probe-blr", type=float, default=0.1, help="LARS lr * 256 / batch")
    parser.add_argument("--finetune-epochs", type=int, default=20, help="0 skips fine-tuning")
    parser.add_argument("--finetune-batch", type=int, default=32)
    parser.add_argument("--finetune-blr", type=float, default=1e-2)
    parser.add_argument("--label-fraction", type=float, default=0.1)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads per process (1: see module doc)"
    )
    parser.add_argument("--jobs", type=int, default=3, help="seeds run in this many processes")
    parser.add_argument("--out", help="also write per-seed results as JSON here")
    parser.add_argument(
        "--states", help="folder: save pretrained states there, reuse them when present"
    )
    return parser.parse_args(argv)


def model_spec_of(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "img_size": args.img_size,
        "patch_size": args.patch_size,
        "in_chans": 3,
        "embed_dim": args.embed_dim,
        "depth": args.depth,
        "num_heads": args.num_heads,
        "decoder_dim": args.decoder_dim,
        "decoder_depth": 2,
        "decoder_num_heads": 4,
    }


def measured_columns(args: argparse.Namespace) -> dict[str, str]:
    """The table's columns for this configuration: `--finetune-epochs 0` measures no fine-tune."""
    skipped = set() if args.finetune_epochs else {"finetune/top1"}
    return {key: title for key, title in COLUMNS.items() if key not in skipped}


def pretrained_state(
    method_name: str,
    model_spec: dict[str, Any],
    images: torch.Tensor,
    args: argparse.Namespace,
    seed: int,
) -> tuple[dict[str, torch.Tensor], float]:
    """Pretrain, or with `--states DIR` reuse the state an earlier run saved there (so that
    evaluation settings can be compared on the same encoders without pretraining again)."""
    path = None
    if args.states:
        name = f"{method_name}-{args.source}-{args.img_size}px-p{args.patch_size}"
        name += f"-e{args.epochs}-blr{args.blr:g}-seed{seed}.pt"
        path = Path(args.states) / name
        if path.is_file():
            saved = torch.load(path, weights_only=False)
            say(f"{method_name} seed {seed}: state from {path}")
            return saved["state"], saved["seconds"]
    state, seconds = pretrain(method_name, model_spec, images, args, seed)
    say(f"{method_name} seed {seed}: pretrained in {seconds:.0f} s")
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"state": state, "seconds": seconds}, path)
    return state, seconds


def run_seed(args: argparse.Namespace, seed: int) -> dict[str, tuple[dict[str, float], float]]:
    """Every row of one seed: {row: (metrics, pretrain seconds; 0 for random init)}."""
    torch.set_num_threads(args.threads)
    model_spec = model_spec_of(args)
    train = load_split(args.source, "train", args.images or None, args.img_size)
    val = load_split(args.source, "val", args.val_images or None, args.img_size)
    out = {}
    for row in ["random", *args.methods]:
        state, seconds = None, 0.0
        if row != "random":
            state, seconds = pretrained_state(row, model_spec, train[0], args, seed)
        metrics = evaluate(model_spec, state, train, val, args, seed, args.pool)
        measured = ", ".join(f"{k} {metrics[k]:.3f}" for k in measured_columns(args))
        say(f"{row} seed {seed}: {measured}")
        out[row] = (metrics, seconds)
    return out


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    started = time.perf_counter()
    say(f"config {vars(args)}")
    if args.jobs > 1:  # seeds in parallel processes, each with `--threads` threads
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(args.jobs, mp_context=context) as pool:
            per_seed = list(pool.map(run_seed, [args] * len(args.seeds), args.seeds))
    else:
        per_seed = [run_seed(args, seed) for seed in args.seeds]
    rows = ["random", *args.methods]
    results = {row: [seed_rows[row][0] for seed_rows in per_seed] for row in rows}
    wall = {row: [seed_rows[row][1] for seed_rows in per_seed] for row in args.methods}
    label = {"random": "random init", "mae": "MAE", "emae": f"EMAE K={args.k}"}
    columns = measured_columns(args)
    table = Table(
        "encoder",
        *columns.values(),
        "pretrain wall s",
        title=f"{args.source} {args.images or 'all'} images, {args.epochs} pretrain epochs, "
        f"mean ± std over seeds {args.seeds} (val {args.val_images} images, {args.pool} pool)",
    )
    for row, per_seed in results.items():
        cells = [mean_std([m[key] for m in per_seed]) for key in columns]
        seconds = f"{statistics.fmean(wall[row]):.0f}" if row in wall else "-"
        table.add_row(label.get(row, row), *cells, seconds)
    Console(width=160).print(table)
    say(f"total {time.perf_counter() - started:.0f} s")
    if args.out:
        with open(args.out, "w") as handle:
            json.dump({"config": vars(args), "results": results, "pretrain_s": wall}, handle)


if __name__ == "__main__":
    main()
