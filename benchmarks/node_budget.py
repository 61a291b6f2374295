"""Does a GPU node's CPU keep its GPUs busy? vCPUs needed to decode as fast as the GPUs train.

    python benchmarks/node_budget.py [--mfu 0.4] [--max-side 320] [--images 200]
        [--full-rate R --bounded-rate R] [--vcpu-efficiency 1.0] [--reserved-per-gpu 2]

GPU demand per GPU, from the method's FLOPs (`gpu_flops.py`, ViT-B/16 at 224 px, MAE's
75% masking, EMAE K = 4) and an assumed MFU (default 40%, the middle of the 35-45% that
MAE-style ViT-B training reaches with bf16 and fused kernels):

    images/s per GPU = MFU × dense bf16 peak ÷ training FLOPs per image

Decode supply per vCPU: mimray's own `decode_images` (decode + RandomResizedCrop to 224 +
flip, the fast JPEG path) on ImageNet-like JPEGs (`imagenet_like.py`), full size and as
`mimray data push --max-side N` stores them, measured here in images per CPU-second of one
thread (robust to other load on the machine), or given with --full-rate / --bounded-rate
(e.g. the per-CPU-second figures of `data_throughput.py`, which include Ray's costs).
`--vcpu-efficiency` scales it for a node whose vCPUs are hyperthreads of busy cores (~0.6
when both threads of a core decode; 1.0: the rate as measured on this machine's vCPUs).

A GPU stays >= 95% busy when the decoders supply >= 95% of its demand (input overlapped
with compute, as Ray Data's prefetching does), so a node needs

    vCPUs = 0.95 × GPUs × demand per GPU ÷ rate per vCPU + reserved (per GPU: the training
            process and its loader thread; Ray's own processes)

and a node with V vCPUs keeps its GPUs busy min(1, (V - reserved) × rate ÷ demand).
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from gpu_flops import PEAK_BF16_FLOPS, VIT_B, step_flops_per_image  # noqa: E402

BUSY_TARGET = 0.95
METHODS = {"MAE ViT-B/16": ("mae", {}), "EMAE K=4 ViT-B/16": ("emae", {"k": 4})}


@dataclass(frozen=True)
class Node:
    name: str
    gpu: str  # as in gpu_flops.PEAK_BF16_FLOPS
    gpus: int
    vcpus: int


NODES = (
    Node("8×H100 192 vCPU", "H100", 8, 192),  # p5.48xlarge (a3-highgpu-8g: 208)
    Node("8×H100 96 vCPU", "H100", 8, 96),
    Node("8×A100 96 vCPU", "A100", 8, 96),  # p4d.24xlarge, a2-highgpu-8g
)


def peak(gpu: str) -> float:
    return dict(PEAK_BF16_FLOPS)[gpu]


def gpu_demand(method: str, knobs: dict, gpu: str, mfu: float) -> float:
    """Images/s one GPU trains at `mfu`."""
    return mfu * peak(gpu) / step_flops_per_image(method, VIT_B, knobs)


def vcpus_needed(demand: float, gpus: int, rate: float, reserved_per_gpu: float) -> float:
    return BUSY_TARGET * gpus * demand / rate + reserved_per_gpu * gpus


def busy_share(node: Node, demand: float, rate: float, reserved_per_gpu: float) -> float:
    decoding = max(0.0, node.vcpus - reserved_per_gpu * node.gpus)
    return min(1.0, decoding * rate / (node.gpus * demand))


def measured_rates(images: int, max_side: int) -> tuple[float, float]:
    """mimray's decode_images, one thread, images per CPU-second: full size, max side."""
    from imagenet_like import bounded, imagenet_like_jpegs, single_thread_rates

    full = imagenet_like_jpegs(images)
    rates = []
    for encoded in (full, bounded(full, max_side)):
        rates.append(single_thread_rates(encoded, seconds=6.0, names=["mimray"])["mimray"][1])
    return rates[0], rates[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mfu", type=float, default=0.40)
    parser.add_argument("--max-side", type=int, default=320)
    parser.add_argument("--images", type=int, default=200, help="ImageNet-like JPEGs to time")
    parser.add_argument("--full-rate", type=float, help="images/CPU-s, full size (skip timing)")
    parser.add_argument("--bounded-rate", type=float, help="images/CPU-s, max side")
    parser.add_argument("--vcpu-efficiency", type=float, default=1.0)
    parser.add_argument("--reserved-per-gpu", type=float, default=2.0)
    args = parser.parse_args()
    if (args.full_rate is None) != (args.bounded_rate is None):
        parser.error("--full-rate and --bounded-rate: give both or neither")
    if args.full_rate is None:
        full, bounded = measured_rates(args.images, args.max_side)
        source = f"measured here (one thread, load {os.getloadavg()[0]:.1f})"
    else:
        full, bounded, source = args.full_rate, args.bounded_rate, "given"
    rates = {
        "full size": full * args.vcpu_efficiency,
        f"max side {args.max_side}": bounded * args.vcpu_efficiency,
    }
    print(
        f"decode per vCPU ({source}, × {args.vcpu_efficiency:g}): "
        + ", ".join(f"{name} {rate:.0f} img/s" for name, rate in rates.items())
    )
    print(
        f"GPU demand at {args.mfu:.0%} MFU (dense bf16 peak: H100 989, A100 312 TFLOP/s); "
        f"{args.reserved_per_gpu:g} vCPUs per GPU reserved for training; target >= "
        f"{BUSY_TARGET:.0%} busy"
    )
    header = (
        f"{'method':18} {'node':16} {'data':13} {'img/s/GPU':>9} {'vCPUs needed':>12} "
        f"{'GPU busy':>8}  fed?"
    )
    print(header)
    for label, (method, knobs) in METHODS.items():
        for node in NODES:
            demand = gpu_demand(method, knobs, node.gpu, args.mfu)
            for data, rate in rates.items():
                needed = vcpus_needed(demand, node.gpus, rate, args.reserved_per_gpu)
                busy = busy_share(node, demand, rate, args.reserved_per_gpu)
                fed = "yes" if busy >= BUSY_TARGET else "no"
                print(
                    f"{label:18} {node.name:16} {data:13} {demand:9.0f} {needed:12.0f} "
                    f"{busy:8.0%}  {fed}"
                )


if __name__ == "__main__":
    main()
