"""`mimray data push` mixes classes in every shard, at a size where a class-sorted push shows.

A folder listing comes back class by class. Read shard by shard (as Ray Data's file order and
a reader taking row groups in turn do), a push that kept that order would hand out one class
at a time; a shuffle buffer smaller than a class cannot undo it. Here 4 classes of 128 images
go into shards of about 32 rows, so a sorted push gives single-class shards. No Ray: the push
itself, read back with pyarrow from a local folder and from moto's S3.
"""

from __future__ import annotations

import io

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from PIL import Image

from orchestrator.cli.main import main
from workloads.data.manifest import read_manifest
from workloads.data.object_store import filesystem_for

NUM_CLASSES, PER_CLASS, ROWS_PER_SHARD = 4, 128, 32
COLOURS = [(230, 20, 20), (20, 230, 20), (20, 20, 230), (230, 230, 20)]


def png(label: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), COLOURS[label]).save(buffer, format="PNG")
    return buffer.getvalue()


def write_class_sorted_folder(root) -> int:
    """root/class_k/img_NNN.png; the largest image's size in bytes."""
    for label in range(NUM_CLASSES):
        folder = root / f"class_{label}"
        folder.mkdir(parents=True)
        for index in range(PER_CLASS):
            (folder / f"img_{index:03d}.png").write_bytes(png(label))
    return max(len(png(label)) for label in range(NUM_CLASSES))


def shard_labels(dest: str) -> list[np.ndarray]:
    """The label column of every shard the manifest lists, in stored row order."""
    filesystem, root = filesystem_for(dest)
    return [
        pq.read_table(f"{root}/{shard.path}", filesystem=filesystem, columns=["label"])[
            "label"
        ].to_numpy()
        for shard in read_manifest(dest).shards
    ]


@pytest.mark.parametrize("where", ["local", "s3"])
def test_every_pushed_shard_mixes_the_classes_of_a_class_sorted_folder(where, tmp_path, request):
    image_bytes = write_class_sorted_folder(tmp_path / "images")
    if where == "s3":
        dest = f"s3://{request.getfixturevalue('bucket')}/pushed"
    else:
        dest = str(tmp_path / "pushed")
    shard_mb = ROWS_PER_SHARD * image_bytes / 2**20
    pushed = CliRunner().invoke(
        main, ["data", "push", str(tmp_path / "images"), dest, "--shard-mb", f"{shard_mb:.6f}"]
    )
    assert pushed.exit_code == 0, pushed.output

    shards = shard_labels(dest)
    # Shards small enough that a class-sorted push would give single-class shards.
    assert len(shards) >= 2 * NUM_CLASSES
    assert max(len(labels) for labels in shards) <= PER_CLASS // 2
    everything = np.concatenate(shards)
    assert np.bincount(everything).tolist() == [PER_CLASS] * NUM_CLASSES  # every image once
    for index, labels in enumerate(shards):
        counts = np.bincount(labels, minlength=NUM_CLASSES)
        # ~8 of each expected in 32 rows; sorted rows give 32/0/0/0.
        assert counts.min() >= 1 and counts.max() <= len(labels) * 3 // 4, (index, counts)
        # Mixed within the shard too, not runs of one class (a reader may take part of it).
        runs = 1 + np.count_nonzero(np.diff(labels))
        assert runs >= len(labels) // 3, (index, labels)
