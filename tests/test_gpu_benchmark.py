"""benchmarks/gpu_pretrain.py stays correct without a GPU: its FLOPs formulas against counted
FLOPs, its figures from a tiny CPU run, its input side on local Ray; and `train.compile`."""

from __future__ import annotations

import hashlib
import importlib
import json
import sys
from pathlib import Path

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from orchestrator.config import ConfigError, load_spec
from workloads.distributed import unwrap
from workloads.methods import get_method, method_names

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
gpu_flops = importlib.import_module("gpu_flops")
gpu_pretrain = importlib.import_module("gpu_pretrain")
gpu_input = importlib.import_module("gpu_input")

SMALL = dict(
    img_size=32,
    patch_size=4,
    embed_dim=64,
    depth=2,
    num_heads=2,
    decoder_dim=32,
    decoder_depth=2,
    decoder_num_heads=2,
)
QUICK = ["--size", "tiny", "--batch", "4", "--steps", "1", "--warmup", "0"]


@pytest.mark.parametrize("name", sorted(gpu_flops.FLOPS_BY_METHOD))
def test_analytic_flops_equal_the_counted_flops_of_a_training_step(name):
    method = get_method(name)
    knobs = method.knobs.model_validate({"name": name, **gpu_pretrain.KNOBS.get(name, {})})
    model = method.build(SMALL, knobs)
    images = torch.randn(3, 3, 32, 32)
    # The math backend runs attention as plain batched products, which the counter sees
    # (it has no formula for the fused CPU kernel).
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(images).loss.backward()
    counted = counter.get_total_flops() / len(images)
    analytic = gpu_flops.step_flops_per_image(name, SMALL, knobs.model_dump())
    assert analytic == pytest.approx(counted, rel=0.01)


def test_every_registered_method_has_a_formula():
    assert set(method_names()) <= set(gpu_flops.FLOPS_BY_METHOD)


def test_vit_b_mae_costs_about_58_gflop_and_emae_k4_about_four_times_that():
    vit_b = gpu_pretrain.SIZES["vit-b"]
    mae = gpu_flops.step_flops_per_image("mae", vit_b)
    emae = gpu_flops.step_flops_per_image("emae", vit_b, {"k": 4})
    assert mae / 1e9 == pytest.approx(58, rel=0.15)
    assert 3.8 < emae / mae < 4.0  # one shared patch embedding keeps it under 4x


@pytest.mark.parametrize(
    ("name", "peak"),
    [
        ("NVIDIA H200", 989e12),
        ("NVIDIA H100 80GB HBM3", 989e12),
        ("NVIDIA H100 PCIe", 756e12),
        ("NVIDIA A100-SXM4-80GB", 312e12),
        ("NVIDIA GeForce RTX 4090", None),
    ],
)
def test_peak_is_detected_from_the_device_name(name, peak):
    assert gpu_flops.peak_flops_for(name) == peak


def test_tiny_cpu_run_gives_sane_figures_for_every_method(tmp_path):
    out = tmp_path / "figures.json"
    # 1 TFLOP/s is far above what two CPU cores reach in fp32, so MFU lands inside (0, 1).
    gpu_pretrain.main(QUICK + ["--compile", "off", "--peak-tflops", "1", "--json", str(out)])
    report = json.loads(out.read_text())
    assert report["device_name"] == "cpu" and report["peak_tflops"] == 1.0
    rows = {row["method"]: row for row in report["rows"]}
    assert set(rows) == set(method_names())
    for row in rows.values():
        assert "error" not in row, row
        assert row["images_per_s"] > 0
        assert row["sdpa_attention"] is True  # every timm attention block uses SDPA
        assert 0 < row["mfu"] < 1
        assert row["tflop_per_s"] == pytest.approx(row["mfu"] * 1.0)
    assert rows["mae"]["step_vs_mae"] == 1.0
    assert rows["emae"]["gflop_per_image"] > 3 * rows["mae"]["gflop_per_image"]
    assert report["vit_b_mae_gflop_per_image"] == pytest.approx(58, rel=0.15)


def test_compiled_step_runs(capsys):
    # The eager backend exercises torch.compile's capture (graph breaks included) in seconds.
    report = gpu_pretrain.main(
        QUICK + ["--methods", "mae", "--compile", "on", "--compile-backend", "eager"]
    )
    (row,) = report["rows"]
    assert row["compile"] is True and "error" not in row and row["images_per_s"] > 0
    assert row["compiled_graphs"] >= 1  # dynamo captured the step
    assert row["mfu"] is None  # no peak is known for a CPU, and none was given
    assert "MFU not computed" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--size", "huge"], "--size: 'huge'; allowed: vit-b, vit-s, tiny"),
        (["--methods", "mae,bert"], "--methods: mae,bert; allowed:"),
        (["--compile", "maybe"], "--compile: allowed: off, on, both"),
        (["--peak-tflops", "0"], "--peak-tflops: must be > 0"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(argv, named, capsys):
    with pytest.raises(SystemExit) as done:
        gpu_pretrain.parse_args(argv)
    assert done.value.code == 2
    error = capsys.readouterr().err
    assert named in error and error.count("\n") == 1


def test_input_side_streams_pushed_jpeg_shards_with_ray_data(ray_session, capsys):
    report = gpu_pretrain.main(
        QUICK
        + [
            "--methods",
            "mae",
            "--compile",
            "off",
            "--data-images",
            "24",
            "--data-cpus",
            "2",
            "--data-batch",
            "4",
            "--decode-seconds",
            "0.5",
        ]
    )
    data = report["input"]
    assert data["jpeg_mean_bytes"] > 10_000  # photo-like, not a flat colour
    assert data["pil_decode_per_core"] > 0 and data["pil_decode_all_cores"] > 0
    assert data["push"]["rows"] == 24
    assert data["ray_data"]["images"] == 24 and data["ray_data"]["images_per_s"] > 0
    assert "no CUDA device" in data["pretrain_skipped"]
    assert "per core" in capsys.readouterr().out


def test_train_compile_defaults_off_and_keeps_old_fingerprints():
    spec = load_spec("demo")
    assert spec.train.compile is False
    tree = spec.model_dump(mode="json")
    del tree["train"]["compile"], tree["eval"]
    if not tree["scaling"]["worker_resources"]:
        del tree["scaling"]["worker_resources"]

    before = hashlib.sha256(json.dumps(tree, sort_keys=True).encode()).hexdigest()[:16]
    assert spec.fingerprint() == before  # runs made before the key existed keep their names
    compiled = load_spec("demo", ["train.compile=true"])
    assert compiled.train.compile is True and compiled.fingerprint() != spec.fingerprint()
    with pytest.raises(ConfigError, match="train.compile"):
        load_spec("demo", ["train.compile=maybe"])


def test_unwrap_peels_torch_compile_so_checkpoint_keys_stay_plain():
    method = get_method("mae")
    model = method.build(SMALL, method.knobs())
    compiled = torch.compile(model)
    assert unwrap(compiled) is model
    assert all(not key.startswith("_orig_mod.") for key in unwrap(compiled).state_dict())


@pytest.mark.slow
def test_data_wait_share_comes_back_from_a_real_pretrain(ray_session, tmp_path):
    # The GPU run's code path on a CPU worker: push JPEG shards, train, read MLflow back.
    folder, shards = str(tmp_path / "jpeg"), str(tmp_path / "shards")
    gpu_input.write_jpeg_folder(folder, 48, unique=8)
    gpu_input.push_jpeg_shards(folder, shards)
    tiny = gpu_pretrain.SIZES["tiny"]
    result = gpu_input.pretrain_data_wait(
        shards, tiny, str(tmp_path), batch_size=16, epochs=2, cpus=0.5, use_gpu=False
    )
    assert result["epochs"] == 2
    assert 0 < result["data_wait_share"] < 1
    assert 0 < result["data_wait_share_all_epochs"] < 1
    assert len(result["images_per_s_by_epoch"]) == 2
