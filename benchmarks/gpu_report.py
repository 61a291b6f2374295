"""The printed report of gpu_pretrain.py: one table of the model rows, then the input side."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def summary(row: Mapping[str, Any]) -> str:
    if "error" in row:
        return row["error"]
    line = f"{row['images_per_s']:.1f} images/s, step {row['step_s'] * 1e3:.1f} ms"
    if row.get("compiled_graphs"):
        line += f", {row['compiled_graphs']} compiled graph(s), warm-up {row['warmup_s']:.0f} s"
    return line


def print_report(report: Mapping[str, Any]) -> None:
    peak = report["peak_tflops"]
    print(
        f"\ndevice: {report['device_name']}  size: {report['size']}  "
        f"peak bf16: {f'{peak:.0f} TFLOP/s' if peak else 'unknown (MFU not computed)'}"
    )
    header = ("method", "compile", "batch", "images/s", "step ms", "GFLOP/img", "TFLOP/s")
    header += ("MFU", "peak GiB", "x MAE step")
    lines = [header]
    for row in report["rows"]:
        if "error" in row:
            lines.append((row["method"], str(row["compile"]), str(row["batch"]), row["error"]))
            continue
        lines.append(
            (
                row["method"],
                "on" if row["compile"] else "off",
                str(row["batch"]),
                f"{row['images_per_s']:.1f}",
                f"{row['step_s'] * 1e3:.1f}",
                _fmt(row.get("gflop_per_image"), ".2f"),
                _fmt(row.get("tflop_per_s"), ".2f"),
                _fmt(row.get("mfu"), ".1%"),
                _fmt(row.get("peak_memory_gib"), ".1f"),
                _fmt(row.get("step_vs_mae"), ".2f"),
            )
        )
    widths = [max(len(line[i]) for line in lines if i < len(line)) for i in range(len(header))]
    for line in lines:
        print("  ".join(cell.rjust(widths[i]) for i, cell in enumerate(line)))
    data = report.get("input")
    if data:
        print(
            f"input: JPEG {data['jpeg_mean_bytes'] / 1e3:.0f} KB mean; PIL decode+crop "
            f"{data['pil_decode_per_core']:.0f} images/s on one core, "
            f"{data['pil_decode_all_cores']:.0f} images/s in {data['cpus']} processes"
        )
        ray_data = data.get("ray_data")
        if ray_data:
            print(
                f"input: Ray Data stream {_fmt(ray_data['images_per_s'], '.0f')} images/s on "
                f"{ray_data['cpus']} CPUs = {_fmt(ray_data['images_per_s_per_core'], '.0f')} "
                f"per core over a whole pass of {ray_data['images']} (first batch after "
                f"{ray_data['first_batch_s']:.1f} s; "
                f"{_fmt(ray_data['images_per_s_after_first_batch'], '.0f')} images/s after it)"
            )
        for key in ("skipped", "pretrain_skipped"):
            if key in data:
                print(f"input: skipped: {data[key]}")
        if "pretrain" in data:
            pretrain = data["pretrain"]
            print(
                f"input: mimray pretrain (1 GPU worker): data wait "
                f"{pretrain['data_wait_share']:.1%} of epoch time after epoch 1 "
                f"({pretrain['data_wait_share_all_epochs']:.1%} over all "
                f"{pretrain['epochs']} epochs)"
            )


def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)
