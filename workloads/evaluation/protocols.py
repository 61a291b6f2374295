"""The three evaluation protocols, as functions of features and batch iterators.

Nothing here knows about Ray: a distributed caller passes `rank`/`world_size`, a `wrap` that
makes a module data-parallel and a `reduce` that sums counts over workers; the defaults run
in one process.

The linear probe is MAE's (`main_linprobe.py`): BatchNorm(affine=False) + Linear trained with
LARS (momentum 0.9, trust coefficient 0.001, no weight decay by default), lr = blr * batch /
256 with linear warmup then half-cycle cosine, set every step. One difference, chosen for cost:
MAE augments every probe epoch (RandomResizedCrop + flip) and so runs the frozen encoder on
every image every epoch; here each image's features are extracted once, un-augmented (resize
only, as MAE's val transform), and the head trains on those cached features. A probe epoch
then costs a pass of the head alone, so many epochs are cheap; the price is that the head
never sees augmented views. MAE's blr 0.1 is calibrated for ImageNet's thousands of steps per
epoch: on a small set LARS at 0.1 barely moves the head, so small-data presets set a larger
blr, chosen on a selection split (`benchmarks/linear_probe_recipe.py`).

Repeatable: every random draw (head initialisation, the probe's feature order, fine-tuning's
flips) comes from generators seeded with the eval spec's `seed`; the batch order of
fine-tuning is the caller's (`train_epoch(epoch)`, see `loop.py`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from timm.optim import Lars
from torch import Tensor, nn

from workloads.evaluation.heads import (
    FineTuneClassifier,
    LinearProbe,
    Pool,
    layer_decay_param_groups,
    pool_tokens,
)
from workloads.evaluation.knn import knn_top1
from workloads.model_input import to_model_input
from workloads.models.vit import ViTEncoder
from workloads.optim import set_lr
from workloads.run_spec import FinetuneSection, LinearSection
from workloads.schedule import lr_at, scaled_lr

# (uint8 images (B, H, W, C), int64 labels (B,)) batches of one pass over a split.
Batches = Iterable[tuple[Tensor, Tensor]]
EpochHook = Callable[[int, dict[str, float]], None]

# MAE's LARS (util/lars.py): SGD momentum and the layer-wise trust coefficient.
LARS_MOMENTUM = 0.9
LARS_TRUST_COEFFICIENT = 0.001
CPU = torch.device("cpu")


def _identity(module: nn.Module) -> nn.Module:
    return module


def _local_sum(values: list[int]) -> list[int]:
    return values


@torch.no_grad()
def extract_features(
    encoder: ViTEncoder, batches: Batches, pool: Pool, device: torch.device
) -> tuple[Tensor, Tensor]:
    """Frozen features (N, D) and labels (N,) of every image in `batches`, on the CPU."""
    encoder.eval().to(device)
    features, labels = [], []
    for images, batch_labels in batches:
        latent = encoder(to_model_input(images, device))  # (B, 1+N, D)
        features.append(pool_tokens(latent, pool).float().cpu())
        labels.append(batch_labels.long().cpu())
    if not features:
        return torch.empty(0, encoder.embed_dim), torch.empty(0, dtype=torch.long)
    return torch.cat(features), torch.cat(labels)


def knn_metrics(
    train: tuple[Tensor, Tensor],
    val: tuple[Tensor, Tensor],
    num_classes: int,
    k: int,
    temperature: float,
    device: torch.device = CPU,
) -> dict[str, float]:
    """Top-1 of weighted k-NN with the configured k, and of 1-NN, on frozen features; the
    similarities are computed on `device` (the worker's accelerator where it has one)."""
    (bank, bank_labels), (queries, query_labels) = (
        (features.to(device), labels.to(device)) for features, labels in (train, val)
    )
    return {
        "knn/top1": knn_top1(bank, bank_labels, queries, query_labels, k, num_classes, temperature),
        "knn/top1_1nn": knn_top1(bank, bank_labels, queries, query_labels, 1, num_classes),
    }


def probe_optimizer(probe: nn.Module, lr: float, weight_decay: float) -> Lars:
    """MAE's LARS for the probe head, as timm implements it.

    MAE adapts (and decays) only weight matrices: biases and norms take plain SGD with
    momentum. timm's `Lars` adapts a group only when it decays or has `always_adapt`, so the
    matrices get `always_adapt=True` (MAE adapts them even at weight decay 0, its default)
    and the rest neither adaptation nor decay.
    """
    params = [p for p in probe.parameters() if p.requires_grad]
    return Lars(
        [
            {"params": [p for p in params if p.ndim > 1], "always_adapt": True},
            {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0},
        ],
        lr=lr,
        momentum=LARS_MOMENTUM,
        weight_decay=weight_decay,
        trust_coeff=LARS_TRUST_COEFFICIENT,
    )


def linear_probe(
    train: tuple[Tensor, Tensor],
    val: tuple[Tensor, Tensor],
    num_classes: int,
    config: LinearSection,
    *,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    wrap: Callable[[nn.Module], nn.Module] = _identity,
    on_epoch: EpochHook | None = None,
) -> dict[str, float]:
    """Train BatchNorm(affine=False) + Linear on cached frozen features with MAE's LARS,
    warmup + cosine (see the module docstring).

    Every rank holds all features; each trains on its own slice of a shared permutation, so
    the data-parallel head sees every feature once per epoch.
    """
    features, labels = train
    per_rank = len(features) // world_size
    batch = max(2, min(config["batch_size"] // world_size, per_rank))  # BatchNorm needs 2
    steps_per_epoch = max(1, per_rank // batch)
    total_steps = steps_per_epoch * config["epochs"]
    warmup_steps = round(steps_per_epoch * config["warmup_epochs"])
    peak_lr = scaled_lr(config["blr"], batch * world_size)

    init = torch.Generator().manual_seed(seed)
    probe = wrap(LinearProbe(features.shape[1], num_classes, generator=init))
    device = next(probe.parameters()).device
    optimizer = probe_optimizer(probe, peak_lr, config["weight_decay"])
    order_generator = torch.Generator().manual_seed(seed)  # the same permutation on every rank
    step, top1, best = 0, 0.0, 0.0
    for epoch in range(config["epochs"]):
        mine = torch.randperm(len(features), generator=order_generator)[rank::world_size]
        probe.train()
        losses = []
        for index in mine[: steps_per_epoch * batch].split(batch):
            set_lr(optimizer, lr_at(step, total_steps, warmup_steps, peak_lr))
            logits = probe(features[index].to(device))
            loss = F.cross_entropy(logits, labels[index].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            step += 1
        top1 = _feature_accuracy(probe, val, device)
        best = max(best, top1)
        if on_epoch is not None:
            on_epoch(epoch + 1, {"linear/train_loss": _mean(losses), "linear/val_top1": top1})
    return {"linear/top1": top1, "linear/best_top1": best}


@torch.no_grad()
def _feature_accuracy(probe: nn.Module, val: tuple[Tensor, Tensor], device: torch.device) -> float:
    features, labels = val
    probe.eval()
    predicted = probe(features.to(device)).argmax(dim=1).cpu()
    return (predicted == labels).float().mean().item() if len(labels) else 0.0


def random_hflip(images: Tensor, generator: torch.Generator) -> Tensor:
    """Each uint8 (B, H, W, C) image mirrored left-right with probability 1/2, the coin flips
    drawn from `generator` (so a rerun flips the same images)."""
    flip = torch.rand(len(images), generator=generator) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1), images.flip(2), images)


def finetune(
    encoder: ViTEncoder,
    train_epoch: Callable[[int], Batches],
    val_epoch: Callable[[], Batches],
    num_classes: int,
    config: FinetuneSection,
    *,
    steps_per_epoch: int,
    global_batch_size: int,
    device: torch.device,
    pool: Pool = "mean",
    seed: int = 0,
    rank: int = 0,
    wrap: Callable[[nn.Module], nn.Module] = _identity,
    reduce: Callable[[list[int]], list[int]] = _local_sum,
    on_epoch: EpochHook | None = None,
) -> dict[str, float]:
    """Train the whole encoder + head: AdamW, layer-wise lr decay, warmup + cosine.

    `train_epoch(epoch)` yields one pass of training batches in that epoch's order; with
    `config["hflip"]` each image is flipped at random (seeded by `seed` and `rank`). Surplus
    batches past `steps_per_epoch` are drained, not trained, so data-parallel workers step in
    lockstep.
    """
    init = torch.Generator().manual_seed(seed)
    classifier = FineTuneClassifier(encoder, num_classes, pool, generator=init).to(device)
    groups = layer_decay_param_groups(classifier, config["weight_decay"], config["layer_decay"])
    peak_lr = scaled_lr(config["blr"], global_batch_size)
    optimizer = torch.optim.AdamW(groups, lr=peak_lr, betas=(0.9, 0.999))
    model = wrap(classifier)
    flips = torch.Generator().manual_seed(seed * 1_000_003 + rank)  # distinct per worker
    total_steps = steps_per_epoch * config["epochs"]
    warmup_steps = round(steps_per_epoch * config["warmup_epochs"])
    step, top1, best = 0, 0.0, 0.0
    for epoch in range(config["epochs"]):
        model.train()
        losses: list[float] = []
        for images, labels in train_epoch(epoch):
            if len(losses) == steps_per_epoch:
                continue
            if config["hflip"]:
                images = random_hflip(images, flips)
            set_lr(optimizer, lr_at(step, total_steps, warmup_steps, peak_lr))
            logits = model(to_model_input(images, device))
            loss = F.cross_entropy(
                logits, labels.to(device), label_smoothing=config["label_smoothing"]
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            step += 1
        correct, total = reduce(list(count_correct(model, val_epoch(), device)))
        top1 = correct / total if total else 0.0
        best = max(best, top1)
        if on_epoch is not None:
            on_epoch(epoch + 1, {"finetune/train_loss": _mean(losses), "finetune/val_top1": top1})
    return {"finetune/top1": top1, "finetune/best_top1": best}


@torch.no_grad()
def count_correct(model: nn.Module, batches: Batches, device: torch.device) -> tuple[int, int]:
    """(correctly classified, total) over `batches`."""
    model.eval()
    correct = total = 0
    for images, labels in batches:
        predicted = model(to_model_input(images, device)).argmax(dim=1).cpu()
        correct += int((predicted == labels.cpu()).sum())
        total += len(labels)
    return correct, total


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")
