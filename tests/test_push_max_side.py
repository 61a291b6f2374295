"""`mimray data push --max-side N [--quality Q]`: stored images bounded, the bound recorded."""

from __future__ import annotations

import io
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from PIL import Image

from orchestrator.cli.main import main
from orchestrator.pretrain.prepare import TrainingInput, log_training_input
from tests.cli_checks import assert_refused
from workloads.data import describe_source
from workloads.data.manifest import read_manifest
from workloads.data.object_store import filesystem_for

MAX_SIDE = 320
# (file name, size, format): larger ones on either side, one that fits, one exactly at N.
IMAGES = [
    ("wide.jpg", (600, 400), "JPEG"),
    ("tall.jpg", (240, 500), "JPEG"),
    ("fits.jpg", (300, 200), "JPEG"),
    ("edge.jpg", (320, 240), "JPEG"),
    ("big.png", (800, 600), "PNG"),
    ("small.png", (64, 48), "PNG"),
]


@pytest.fixture
def image_folder(tmp_path):
    """One class folder of photo-like images (smooth colour plus grain), and a corrupt file."""
    rng = np.random.default_rng(0)
    originals = {}
    for name, (width, height), image_format in IMAGES:
        coarse = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
        image = Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC)
        pixels = np.asarray(image, np.int16) + rng.normal(0, 8, (height, width, 1))
        buffer = io.BytesIO()
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, image_format)
        originals[f"photos/{name}"] = buffer.getvalue()
    originals["photos/corrupt.jpg"] = b"\xff\xd8\xff not really a jpeg"
    for key, data in originals.items():
        path = tmp_path / "images" / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return tmp_path / "images", originals


def stored_images(uri: str) -> dict[str, bytes]:
    filesystem, root = filesystem_for(uri)
    rows = {}
    for shard in read_manifest(uri).shards:
        table = pq.read_table(f"{root}/{shard.path}", filesystem=filesystem)
        rows.update(zip(table["id"].to_pylist(), table["image"].to_pylist(), strict=True))
    return rows


def test_push_max_side_bounds_every_image_and_records_it(s3_env, bucket, image_folder, workdir):
    folder, originals = image_folder
    uri = f"s3://{bucket}/bounded"
    pushed = CliRunner().invoke(
        main, ["data", "push", str(folder), uri, "--max-side", str(MAX_SIDE), "--quality", "85"]
    )
    assert pushed.exit_code == 0, pushed.output
    assert f"longer side <= {MAX_SIDE} px" in pushed.output

    stored = stored_images(uri)
    assert sorted(stored) == sorted(originals)
    for key, data in stored.items():
        if key.endswith("corrupt.jpg"):
            assert data == originals[key]  # kept, to be counted as undecodable by readers
            continue
        image = Image.open(io.BytesIO(data))
        original = Image.open(io.BytesIO(originals[key]))
        assert max(image.size) <= MAX_SIDE, (key, image.size)
        if max(original.size) <= MAX_SIDE:
            assert data == originals[key], key  # an image that fits keeps its bytes
        else:
            assert image.format == "JPEG" and max(image.size) == MAX_SIDE, (key, image.size)
            aspect, kept = original.width / original.height, image.width / image.height
            assert abs(aspect - kept) < 0.01, (key, image.size)

    manifest = read_manifest(uri)
    assert (manifest.max_side, manifest.quality) == (MAX_SIDE, 85)
    document = json.loads(
        filesystem_for(uri)[0].open_input_stream(f"{filesystem_for(uri)[1]}/manifest.json").read()
    )
    assert (document["max_side"], document["quality"]) == (MAX_SIDE, 85)
    info = describe_source(uri)
    assert info.max_side == MAX_SIDE
    inspected = CliRunner().invoke(main, ["data", "inspect", uri])
    assert f"{MAX_SIDE} px (JPEG quality 85)" in inspected.output, inspected.output

    # The run's MLflow dataset input says what resolution it saw.
    from orchestrator.tracking import Tracker

    tracker = Tracker(f"sqlite:///{workdir}/mlflow.db", "bounded")
    run_id = tracker.client.create_run(tracker.experiment_id).info.run_id
    data = TrainingInput("bounded-train", uri, info.digest, info.num_rows, info.max_side)
    log_training_input(tracker, run_id, data)
    (declared,) = tracker.client.get_run(run_id).inputs.dataset_inputs
    assert json.loads(declared.dataset.profile)["max_side"] == MAX_SIDE


def test_push_without_max_side_records_none(tmp_path, image_folder):
    folder, originals = image_folder
    dest = tmp_path / "plain"
    pushed = CliRunner().invoke(main, ["data", "push", str(folder), str(dest)])
    assert pushed.exit_code == 0, pushed.output
    assert read_manifest(str(dest)).max_side is None
    assert "max_side" not in (dest / "manifest.json").read_text()
    assert describe_source(str(dest)).max_side is None
    assert stored_images(str(dest)) == originals


@pytest.mark.parametrize(
    "options, expected",
    [
        (["--max-side", "4"], "--max-side 4: allowed: an integer >= 8"),
        (["--max-side", "320", "--quality", "0"], "--quality 0: allowed: 1 to 100"),
        (["--quality", "80"], "--quality sets the JPEG quality of re-encoded images"),
        (["--max-side", "320", "--quality", "80", "--format", "png"], "allowed with --max-side"),
    ],
)
def test_bad_bounds_are_refused_before_anything_is_written(
    tmp_path, image_folder, options, expected
):
    folder, _ = image_folder
    dest = tmp_path / "refused"
    outcome = CliRunner().invoke(main, ["data", "push", str(folder), str(dest), *options])
    assert_refused(outcome, expected)
    assert not dest.exists()
