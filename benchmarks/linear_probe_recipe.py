"""MAE's linear probe (LARS) against the SGD probe mimray used before, on saved encoders.

    python benchmarks/linear_probe_recipe.py --states DIR [--source digits] [--seeds 0 1 2]
        [--blrs 1 3 10 30 100] [--out results.json]

`--states DIR` holds MAE states that `pretrain_vs_random.py --states DIR` saved (the
`mae-vs-random` preset's pretraining: digits 16 px, patch 4, dim 128, depth 4, 30 epochs,
blr 1.5e-3, crops + flips). For every seed, the MAE encoder and the random-init encoder of the
same seed are probed on frozen mean-pooled features:

- SGD: the probe before this change (SGD momentum 0.9, blr 0.1, batch 256, 50 epochs, 1
  warmup epoch: the preset's `linear: {epochs: 50}` on the old defaults);
- LARS: `workloads.evaluation.protocols.linear_probe` (MAE's recipe: LARS, trust coefficient
  0.001, 90 epochs, 10 warmup, batch 256) with the blr chosen on a selection split: the probe
  is fitted on the first 80% of the train split and scored on the last 20% for every blr in
  `--blrs`; the blr with the best mean selection top-1 of the MAE encoders is then fitted on
  the whole train split and reported on val. Val never takes part in the choice.

Prints one line per seed and a mean ± std table; no Ray, CPU only, seconds per probe.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent))
from pretrain_vs_random import batches, load_split  # noqa: E402

import workloads.evaluation.protocols as protocols  # noqa: E402
from workloads.data import selection_fit_rows  # noqa: E402
from workloads.evaluation.heads import load_encoder  # noqa: E402

CPU = torch.device("cpu")
MODEL = {
    "img_size": 16,
    "patch_size": 4,
    "in_chans": 3,
    "embed_dim": 128,
    "depth": 4,
    "num_heads": 4,
    "decoder_dim": 128,
    "decoder_depth": 2,
    "decoder_num_heads": 4,
}
SGD = {"epochs": 50, "batch_size": 256, "blr": 0.1, "weight_decay": 0.0, "warmup_epochs": 1}
LARS = {"epochs": 90, "batch_size": 256, "weight_decay": 0.0, "warmup_epochs": 10}
Split = tuple[torch.Tensor, torch.Tensor]


def sgd_probe(train: Split, val: Split, num_classes: int, seed: int) -> float:
    """The probe as it was: the same head and schedule, `torch.optim.SGD` instead of LARS."""
    lars = protocols.probe_optimizer
    protocols.probe_optimizer = lambda probe, lr, wd: torch.optim.SGD(
        probe.parameters(), lr=lr, momentum=0.9, weight_decay=wd
    )
    try:
        return protocols.linear_probe(train, val, num_classes, SGD, seed=seed)["linear/top1"]
    finally:
        protocols.probe_optimizer = lars


def lars_probe(train: Split, val: Split, num_classes: int, seed: int, blr: float) -> float:
    return protocols.linear_probe(train, val, num_classes, {**LARS, "blr": blr}, seed=seed)[
        "linear/top1"
    ]


def features(state: dict[str, torch.Tensor] | None, split: Split, seed: int) -> Split:
    encoder = load_encoder(MODEL, state, init_seed=seed)
    return protocols.extract_features(encoder, batches(*split, 256), "mean", CPU)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--states", required=True)
    parser.add_argument("--source", default="digits")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--blrs", nargs="+", type=float, default=[1, 3, 10, 30, 100])
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    train_images = load_split(args.source, "train", None, MODEL["img_size"])
    val_images = load_split(args.source, "val", None, MODEL["img_size"])
    num_classes = int(train_images[1].max()) + 1
    fit_rows = selection_fit_rows(len(train_images[1]))  # mimray's `data.split: selection`

    encoders: dict[tuple[str, int], tuple[Split, Split]] = {}
    for seed in args.seeds:
        name = f"mae-{args.source}-16px-p4-e30-blr0.0015-seed{seed}.pt"
        state = torch.load(Path(args.states) / name, weights_only=False)["state"]
        for arm, arm_state in (("mae", state), ("random", None)):
            encoders[arm, seed] = (
                features(arm_state, train_images, seed),
                features(arm_state, val_images, seed),
            )

    selection: dict[float, list[float]] = {blr: [] for blr in args.blrs}
    for (arm, seed), (train, _) in encoders.items():
        fit = (train[0][:fit_rows], train[1][:fit_rows])
        held = (train[0][fit_rows:], train[1][fit_rows:])
        for blr in args.blrs:
            top1 = lars_probe(fit, held, num_classes, seed, blr)
            print(f"selection {arm} seed {seed} blr {blr:g}: {top1:.3f}", flush=True)
            if arm == "mae":
                selection[blr].append(top1)
    chosen = max(args.blrs, key=lambda blr: statistics.fmean(selection[blr]))
    print(f"chosen blr {chosen:g} (selection split, MAE encoders)", flush=True)

    results: dict[str, dict[str, list[float]]] = {"mae": {}, "random": {}}
    for (arm, seed), (train, val) in encoders.items():
        row = {
            "sgd": sgd_probe(train, val, num_classes, seed),
            "lars": lars_probe(train, val, num_classes, seed, chosen),
            "lars_blr0.1": lars_probe(train, val, num_classes, seed, 0.1),
        }
        print(f"{arm} seed {seed}: " + ", ".join(f"{k} {v:.3f}" for k, v in row.items()))
        for key, value in row.items():
            results[arm].setdefault(key, []).append(value)
    for arm, rows in results.items():
        shown = ", ".join(
            f"{k} {statistics.fmean(v):.3f} ± {statistics.stdev(v):.3f}" for k, v in rows.items()
        )
        print(f"{arm} (val, mean ± std over seeds {args.seeds}): {shown}")
    if args.out:
        record: dict[str, Any] = {
            "chosen_blr": chosen,
            "selection": selection,
            "results": results,
            "seeds": args.seeds,
        }
        Path(args.out).write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
