"""`mimray export MODEL --to timm`: the file loads into the timm ViT it names, strictly, and
gives the encoder's own outputs. Real checkpoint files, a real SQLite MLflow store, real timm."""

from __future__ import annotations

import json

import pytest
import timm
import torch
from cli_checks import assert_refused
from click.testing import CliRunner
from safetensors.torch import load_file
from tiny_model import tiny_model

from orchestrator.cli.main import main
from orchestrator.config import RunSpec
from orchestrator.evaluation.baseline import write_baseline_checkpoint
from orchestrator.evaluation.export import FEATURE_KWARGS, timm_target
from orchestrator.tracking import KIND_TAG, Tracker
from workloads.checkpoint import read_checkpoint_state
from workloads.evaluation.heads import load_encoder


def _checkpoint(folder, method: str = "mae") -> tuple[str, dict]:
    """A pretrain checkpoint of the tiny model (seeded initial weights) and its spec."""
    spec = RunSpec.model_validate(
        {"method": {"name": method}, "model": tiny_model(), "data": {"source": "shapes"}}
    ).model_dump(mode="json")
    return write_baseline_checkpoint(spec, str(folder)), spec


def _export(args: list[str]) -> str:
    out = CliRunner().invoke(main, ["export", *args])
    assert out.exit_code == 0, out.output
    return out.output


def _load_exported(out_file) -> torch.nn.Module:
    record = json.loads(out_file.with_suffix(".json").read_text())
    overlay = {"file": str(out_file), "num_classes": 0}
    return timm.create_model(
        record["timm_model"], pretrained=True, pretrained_cfg_overlay=overlay, **record["kwargs"]
    ).eval()


@pytest.mark.parametrize("method", ["mae", "latent_mim"])
def test_export_loads_in_timm_strictly_with_equal_outputs(tmp_path, method):
    uri, spec = _checkpoint(tmp_path / "run", method)
    out_file = tmp_path / "encoder.safetensors"
    printed = _export([uri, "--to", "timm", "--out", str(out_file)])
    record = json.loads(out_file.with_suffix(".json").read_text())
    assert f"timm model: {record['timm_model']}" in printed
    assert f"timm.create_model('{record['timm_model']}', pretrained=True" in printed

    # Strict by construction: same class count in model and config, so timm's loader raises
    # on any missing or unexpected key; checked explicitly on a bare model too.
    model = _load_exported(out_file)
    bare = timm.create_model(record["timm_model"], pretrained=False, **record["kwargs"])
    result = bare.load_state_dict(load_file(str(out_file)), strict=False)
    assert result.missing_keys == [] and result.unexpected_keys == []

    encoder = load_encoder(spec["model"], read_checkpoint_state(uri)["model"]).eval()
    images = torch.randn(2, 3, spec["model"]["img_size"], spec["model"]["img_size"])
    with torch.no_grad():
        ours = encoder(images)  # (B, 1+N, D)
        assert torch.allclose(model.forward_features(images), ours, atol=1e-5)
        assert torch.allclose(model(images), ours[:, 1:].mean(dim=1), atol=1e-5)


def test_export_by_model_id_through_the_eval_resolver(tmp_path, workdir):
    uri, _ = _checkpoint(tmp_path / "run")
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(tracking_uri, "export")
    handle = tracker.open_run(key="pre", params={}, tags={KIND_TAG: "run"}, run_name="pre")
    reporter = tracker.reporter(handle.run_id, system_metrics=False)
    reporter.start()
    model_id = reporter.log_checkpoint(uri, 3, 30, {})
    reporter.close()
    printed = _export([model_id, "--to", "timm", "--tracking-uri", tracking_uri])
    written = workdir / "checkpoint_epoch_0000.safetensors"  # named after the folder
    assert str(written) in printed
    assert set(load_file(str(written))) == set(load_encoder(tiny_model(), None).state_dict())


def test_standard_sizes_get_timm_names_and_others_every_size():
    base = {"img_size": 224, "patch_size": 16, "embed_dim": 768, "depth": 12, "num_heads": 12}
    target = timm_target(base, "f")
    assert (target.name, target.kwargs) == ("vit_base_patch16_224", FEATURE_KWARGS)
    small_32px = {**base, "img_size": 32, "embed_dim": 384, "num_heads": 6}
    assert timm_target(small_32px, "f").name == "vit_small_patch16_224"
    assert timm_target(small_32px, "f").kwargs == {"img_size": 32, **FEATURE_KWARGS}
    tiny = timm_target(tiny_model(), "f")
    sizes = {k: tiny.kwargs[k] for k in ("img_size", "patch_size", "embed_dim", "depth")}
    assert sizes == {k: tiny_model()[k] for k in sizes}


def test_unknown_format_is_refused(tmp_path):
    uri, _ = _checkpoint(tmp_path / "run")
    line = assert_refused(CliRunner().invoke(main, ["export", uri, "--to", "onnx"]), "")
    assert "--to: unknown format 'onnx'; allowed: timm" in line
