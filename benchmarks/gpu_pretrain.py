"""GPU readiness: per-method pretraining throughput, MFU and memory, and the data path.

    python benchmarks/gpu_pretrain.py [--size vit-b|vit-s|tiny] [--compile off|on|both]
        [--methods mae,emae,...] [--batch N] [--steps N] [--peak-tflops T]
        [--data-images N] [--data-cpus N] [--pretrain-epochs N] [--json OUT]

Model side: every registered method (EMAE with K = 4) at ViT-B/16 224 px (`vit-s` for a
quicker run, `tiny` for CPU), one training step = forward under bf16 autocast (CUDA; fp32 on
CPU), backward, fused AdamW (CUDA) and the method's after-step hook (EMA), on a fixed batch
of random images, so only compute is measured. timm's Attention (used by every block here)
calls F.scaled_dot_product_attention, so attention is PyTorch SDPA (flash on a GPU). Reported:
images/s, model FLOPs per image (analytic, see gpu_flops.py), achieved TFLOP/s, MFU against
the device's dense bf16 peak (detected from the device name, or --peak-tflops), peak memory,
and each method's step time relative to MAE's; with and without torch.compile.

Input side (when Ray is installed): JPEG images (500×375) pushed as Parquet shards with
mimray's own `push`, decoded + RandomResizedCrop to the model size by mimray's Ray Data
stream on --data-cpus CPUs: images/s per core; and, on CUDA only, the data-wait share of a
real `mimray pretrain` with `scaling.use_gpu: true` on those shards (gpu_input.py).

Targets (issue 15): MAE ViT-B/16 bf16 >= 45% MFU; EMAE K=4 step <= 3.5x MAE's; data wait
< 5% of step time with the node's CPUs.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # sibling modules

from gpu_flops import VIT_B, peak_flops_for, step_flops_per_image  # noqa: E402
from gpu_report import print_report, summary  # noqa: E402

SIZES: dict[str, dict[str, int]] = {
    "vit-b": VIT_B,  # MAE's ViT-B/16 recipe
    # ViT-S/16 with a lighter decoder (256-d, 4 blocks), so the decoder does not dominate.
    "vit-s": dict(
        img_size=224,
        patch_size=16,
        embed_dim=384,
        depth=12,
        num_heads=6,
        decoder_dim=256,
        decoder_depth=4,
        decoder_num_heads=8,
    ),
    # For CPU: seconds per method; 64 patches, so EMAE's K = 4 divides them.
    "tiny": dict(
        img_size=32,
        patch_size=4,
        embed_dim=64,
        depth=2,
        num_heads=2,
        decoder_dim=32,
        decoder_depth=1,
        decoder_num_heads=2,
    ),
}
DEFAULT_BATCH = {"vit-b": 256, "vit-s": 256, "tiny": 8}
KNOBS: dict[str, dict[str, Any]] = {"emae": {"k": 4}}
TARGETS = {"mae_mfu_min": 0.45, "emae_vs_mae_max": 3.5, "data_wait_share_max": 0.05}


def build_method(name: str, model: Mapping[str, Any]) -> torch.nn.Module:
    """The method's model, built through the registry as the worker loop does."""
    from workloads.methods import get_method

    method = get_method(name)
    return method.build(model, method.knobs.model_validate({"name": name, **KNOBS.get(name, {})}))


def make_optimizer(model: torch.nn.Module, device: torch.device) -> torch.optim.Optimizer:
    """AdamW with MAE's groups (no decay on norms, biases, tokens); fused kernels on CUDA."""
    from workloads.optim import param_groups_weight_decay

    return torch.optim.AdamW(
        param_groups_weight_decay(model, 0.05),
        lr=1.5e-4,
        betas=(0.9, 0.95),
        fused=device.type == "cuda",
    )


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_method(
    name: str,
    model_spec: Mapping[str, Any],
    batch: int,
    steps: int,
    warmup: int,
    device: torch.device,
    compiled: bool,
    compile_backend: str,
) -> dict[str, Any]:
    """Images/s, step time and peak memory of `steps` timed steps after `warmup` untimed
    ones (the compile happens in those)."""
    torch.manual_seed(0)
    if compiled:
        torch._dynamo.reset()  # fresh caches and counters for this model
        torch._dynamo.utils.counters.clear()
    model = build_method(name, model_spec).to(device).train()
    optimizer = make_optimizer(model, device)
    runner: Callable[[torch.Tensor], Any] = (
        torch.compile(model, backend=compile_backend) if compiled else model
    )
    amp_dtype = torch.bfloat16 if device.type == "cuda" else None
    size = model_spec["img_size"]
    images = torch.randn(batch, 3, size, size, device=device)
    hook = getattr(model, "after_optimizer_step", None)
    total = warmup + steps
    # timm's Attention takes the F.scaled_dot_product_attention path when `fused_attn` is set.
    timm_attention = [m.fused_attn for m in model.modules() if hasattr(m, "fused_attn")]

    def step(index: int) -> None:
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            out = runner(images)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()
        if hook is not None:
            hook(index / total)  # the schedule moves every step, as in training

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    for index in range(warmup):
        step(index)
    synchronize(device)
    warmup_s = time.perf_counter() - started
    started = time.perf_counter()
    for index in range(warmup, total):
        step(index)
    synchronize(device)
    elapsed = time.perf_counter() - started
    # Graphs torch.compile captured: more than one means graph breaks (e.g. .item() calls).
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"] if compiled else None
    peak_memory = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    return {
        "step_s": elapsed / steps,
        "images_per_s": batch * steps / elapsed,
        "warmup_s": warmup_s,
        "compiled_graphs": graphs,
        "sdpa_attention": all(timm_attention) if timm_attention else None,
        "peak_memory_gib": peak_memory / 2**30 if peak_memory is not None else None,
    }


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def model_rows(
    args: argparse.Namespace,
    device: torch.device,
    peak: float | None,
    on_row: Callable[[list[dict]], None] = lambda rows: None,
) -> list[dict]:
    """One row per (compile, method); `on_row(rows so far)` after each, so a run stopped by
    a time limit still leaves its figures behind."""
    model_spec = SIZES[args.size]
    # One throwaway step first: CUDA context, cuBLAS handles and thread pools start here,
    # not inside the first method's timing.
    measure_method(args.methods[0], model_spec, args.batch, 1, 0, device, False, "inductor")
    free_memory(device)
    rows = []
    for compiled in {"off": [False], "on": [True], "both": [False, True]}[args.compile]:
        for name in args.methods:
            flops = step_flops_per_image(name, model_spec, KNOBS.get(name, {}))
            row: dict[str, Any] = {
                "method": name,
                "compile": compiled,
                "batch": args.batch,
                "gflop_per_image": flops / 1e9 if flops else None,
            }
            try:
                row |= measure_method(
                    name,
                    model_spec,
                    args.batch,
                    args.steps,
                    args.warmup + (args.compile_warmup if compiled else 0),
                    device,
                    compiled,
                    args.compile_backend,
                )
            except torch.OutOfMemoryError:
                row["error"] = "out of memory"
            except Exception as error:  # noqa: BLE001 - one method's failure is a result too
                row["error"] = f"{type(error).__name__}: {str(error).splitlines()[0][:160]}"
            finally:
                if compiled:
                    torch._dynamo.reset()
                free_memory(device)
            if "images_per_s" in row and flops:
                row["tflop_per_s"] = flops * row["images_per_s"] / 1e12
                row["mfu"] = flops * row["images_per_s"] / peak if peak else None
            rows.append(row)
            relative_to_mae(rows)
            on_row(rows)
            print(f"  {name} compile={compiled}: {summary(row)}", flush=True)
    return rows


def relative_to_mae(rows: list[dict]) -> None:
    """Each row's step time over MAE's at the same compile setting (the EMAE K=4 target)."""
    mae_step = {r["compile"]: r.get("step_s") for r in rows if r["method"] == "mae"}
    for row in rows:
        baseline = mae_step.get(row["compile"])
        if baseline and row.get("step_s"):
            row["step_vs_mae"] = row["step_s"] / baseline


def input_side(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Decode rates and, on CUDA, the data-wait share of a real pretrain (see gpu_input)."""
    import gpu_input

    result: dict[str, Any] = {}
    img_size = SIZES[args.size]["img_size"]
    with tempfile.TemporaryDirectory(prefix="mimray-gpu-input-") as workdir:
        folder = os.path.join(workdir, "jpeg")
        result["jpeg_mean_bytes"] = gpu_input.write_jpeg_folder(folder, args.data_images)
        encoded = [
            open(os.path.join(root, name), "rb").read()  # noqa: SIM115 - a few small files
            for root, _, names in os.walk(folder)
            for name in names[:16]
        ]
        seconds = args.decode_seconds
        result["pil_decode_per_core"] = gpu_input.pil_decode_rate(encoded, img_size, seconds)
        result["pil_decode_all_cores"] = gpu_input.parallel_pil_decode_rate(
            encoded, img_size, args.data_cpus, seconds
        )
        result["cpus"] = args.data_cpus
        try:
            import ray
        except ImportError:
            result["skipped"] = "Ray is not installed here: no Ray Data or pretrain figures"
            return result
        shards = os.path.join(workdir, "shards")
        result["push"] = gpu_input.push_jpeg_shards(folder, shards)
        started_here = not ray.is_initialized()
        if started_here:
            ray.init(num_cpus=args.data_cpus, include_dashboard=False, log_to_driver=False)
        try:
            from ray.data import DataContext

            DataContext.get_current().enable_progress_bars = False
            result["ray_data"] = gpu_input.ray_decode_rate(
                shards, img_size, args.data_cpus, args.data_batch
            )
            if device.type != "cuda":
                result["pretrain_skipped"] = "no CUDA device: the data-wait run needs a GPU"
            elif args.pretrain_epochs < 1:
                result["pretrain_skipped"] = "--pretrain-epochs 0"
            else:
                result["pretrain"] = gpu_input.pretrain_data_wait(
                    shards,
                    SIZES[args.size],
                    workdir,
                    batch_size=min(args.batch, args.data_images),
                    epochs=args.pretrain_epochs,
                    cpus=1,
                )
        finally:
            if started_here:
                ray.shutdown()
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="vit-b", help=f"one of {', '.join(SIZES)}")
    parser.add_argument("--methods", default=None, help="comma-separated; default: all")
    parser.add_argument("--batch", type=int, default=None, help="images per step")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per method")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps before timing")
    parser.add_argument(
        "--compile-warmup", type=int, default=3, help="extra untimed steps when compiled"
    )
    parser.add_argument("--compile", default="both", help="off, on or both")
    parser.add_argument("--compile-backend", default="inductor", help="torch.compile backend")
    parser.add_argument("--device", default="auto", help="auto, cuda or cpu")
    parser.add_argument("--peak-tflops", type=float, default=None, help="override the peak")
    parser.add_argument("--data-images", type=int, default=0, help="JPEGs for the input side")
    parser.add_argument("--data-cpus", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--data-batch", type=int, default=256, help="rows per Ray Data batch")
    parser.add_argument("--decode-seconds", type=float, default=3.0, help="per PIL decode rate")
    parser.add_argument("--pretrain-epochs", type=int, default=3, help="0 skips the pretrain")
    parser.add_argument("--json", default=None, help="write the figures to this file")
    args = parser.parse_args(argv)

    from workloads.methods import method_names

    known = method_names()
    args.methods = args.methods.split(",") if args.methods else known
    problems = [
        (args.size not in SIZES, f"--size: {args.size!r}; allowed: {', '.join(SIZES)}"),
        (
            any(name not in known for name in args.methods),
            f"--methods: {','.join(args.methods)}; allowed: {', '.join(known)}",
        ),
        (args.compile not in ("off", "on", "both"), "--compile: allowed: off, on, both"),
        (args.device not in ("auto", "cuda", "cpu"), "--device: allowed: auto, cuda, cpu"),
        (args.device == "cuda" and not torch.cuda.is_available(), "--device: no CUDA here"),
        (args.steps < 1 or args.warmup < 0, "--steps >= 1 and --warmup >= 0 required"),
        (args.batch is not None and args.batch < 1, "--batch: must be at least 1"),
        (args.peak_tflops is not None and args.peak_tflops <= 0, "--peak-tflops: must be > 0"),
        (
            args.data_images < 0 or args.data_cpus < 1 or args.data_batch < 1,
            "--data-images >= 0, --data-cpus >= 1 and --data-batch >= 1 required",
        ),
    ]
    for failed, message in problems:
        if failed:
            parser.exit(2, f"gpu_pretrain.py: {message}\n")
    args.batch = args.batch or DEFAULT_BATCH[args.size]
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    use_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda" if use_cuda else "cpu")
    if use_cuda:
        # TF32 for the few fp32 matmuls left outside autocast (fp32 losses, saliency).
        torch.backends.cuda.matmul.allow_tf32 = True
    device_name = torch.cuda.get_device_name(device) if use_cuda else "cpu"
    peak = args.peak_tflops * 1e12 if args.peak_tflops else None
    if peak is None and use_cuda:
        peak = peak_flops_for(device_name)
    print(
        f"torch {torch.__version__} on {device_name}; {args.size}, batch {args.batch}, "
        f"{args.steps} timed steps after {args.warmup} warm-up; methods {','.join(args.methods)}",
        flush=True,
    )
    report: dict[str, Any] = {
        "device_name": device_name,
        "torch": torch.__version__,
        "size": args.size,
        "model": SIZES[args.size],
        "precision": "bf16 autocast" if use_cuda else "fp32",
        "peak_tflops": peak / 1e12 if peak else None,
        "vit_b_mae_gflop_per_image": step_flops_per_image("mae", SIZES["vit-b"]) / 1e9,
        "targets": TARGETS,
        "rows": [],
    }

    def save(rows: list[dict] | None = None) -> None:
        if rows is not None:
            report["rows"] = rows
        if args.json:
            with open(args.json, "w") as file:
                json.dump(report, file, indent=2)

    save(model_rows(args, device, peak, on_row=save))
    if args.data_images:
        report["input"] = input_side(args, device)
        save()
    print_report(report)
    return report


if __name__ == "__main__":
    main()
