"""What reaches a Train worker: rows in a new random order every epoch, classes mixed in every
batch, and MAE's RandomResizedCrop + flip for every source. Real Ray Data, real moto S3.

The stream is the one the trainer gets (`orchestrator.pretrain.trainer.training_stream`), iterated
the way the worker loop iterates it (`iter_torch_batches` with `batch_shuffle_options`), one
worker, batches of 32. Images are solid class colours, so a batch's classes can be read from
the pixels the worker receives, whatever the crop.
"""

from __future__ import annotations

import io

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from conftest import TINY_MODEL
from PIL import Image

from orchestrator.cli.main import main
from orchestrator.config import load_spec
from orchestrator.pretrain.trainer import training_stream
from workloads.data import Augmentation, build_dataset
from workloads.data.decode import augment_pixels
from workloads.data.decode_stage import BLOCK_BYTES
from workloads.data.manifest import read_manifest
from workloads.data.object_store import filesystem_for
from workloads.data.sources.colors import COLOR_CLASSES
from workloads.data.stream import PREFETCH_BATCHES, batch_shuffle_options

NUM_CLASSES, PER_CLASS, BATCH = 4, 64, 32
# Class k is a solid colour, far from the others even after bicubic resampling and a flip.
CLASS_RGB = np.array([[230, 20, 20], [20, 230, 20], [20, 20, 230], [230, 230, 20]], np.uint8)
# Each batch of 32 holds every class (expected 8 each; a class-sorted stream gives 32/0/0/0).
MAX_PER_CLASS = 18


def write_class_sorted_folder(root, size: int = 16) -> None:
    """root/class_k/img_NNN.png, class by class: what a listing returns in sorted order."""
    for label in range(NUM_CLASSES):
        folder = root / f"class_{label}"
        folder.mkdir(parents=True)
        for index in range(PER_CLASS):
            image = np.broadcast_to(CLASS_RGB[label], (size, size, 3))
            Image.fromarray(np.ascontiguousarray(image)).save(folder / f"img_{index:03d}.png")


def classes_of(images: np.ndarray) -> np.ndarray:
    """The class of each (B, H, W, 3) image from its mean colour."""
    means = images.reshape(len(images), -1, 3).mean(axis=1)
    distances = np.linalg.norm(means[:, None, :] - CLASS_RGB[None].astype(float), axis=-1)
    return distances.argmin(axis=1)


def worker_epochs(source: str, epochs: int = 2) -> list[list[np.ndarray]]:
    """The class of every image of every batch, per epoch, as one worker iterates them."""
    spec = load_spec(
        None, [*TINY_MODEL, f"data.source={source}", f"train.batch_size={BATCH}", "train.seed=3"]
    )
    stream = training_stream(spec)
    # Every source's stream runs with the decode stage's settings (see decode_stage.py): with
    # Ray Data's per-operator budgets one of 2 CPUs idled through each epoch's first second.
    assert stream.context.op_resource_reservation_enabled is False
    assert stream.context.target_max_block_size == BLOCK_BYTES
    iterator = stream.iterator()
    seen = []
    for epoch in range(epochs):
        options = batch_shuffle_options(
            spec.data.shuffle, spec.data.shuffle_buffer, spec.train.seed, epoch, rank=0
        )
        batches = iterator.iter_torch_batches(
            batch_size=BATCH, drop_last=True, prefetch_batches=PREFETCH_BATCHES, **options
        )
        seen.append([classes_of(batch["image"].numpy()) for batch in batches])
    return seen


def assert_mixed_and_reshuffled(epochs: list[list[np.ndarray]]) -> None:
    for batches in epochs:
        assert len(batches) == NUM_CLASSES * PER_CLASS // BATCH
        for classes in batches:
            counts = np.bincount(classes, minlength=NUM_CLASSES)
            assert counts.min() >= 1 and counts.max() <= MAX_PER_CLASS, counts
    first, second = (np.concatenate(batches) for batches in epochs)
    assert np.bincount(first).tolist() == [PER_CLASS] * NUM_CLASSES  # every image once
    assert not np.array_equal(first, second)  # a new order in epoch 2


@pytest.mark.parametrize("where", ["folder", "pushed-local", "pushed-s3"])
def test_class_sorted_data_reaches_the_worker_mixed_and_reshuffled(
    where, ray_session, tmp_path, request
):
    folder = tmp_path / "images"
    write_class_sorted_folder(folder)
    source = str(folder)
    if where != "folder":
        if where == "pushed-s3":
            source = f"s3://{request.getfixturevalue('bucket')}/pushed"
        else:
            source = str(tmp_path / "pushed")
        # Shards of about 32 rows, half a class: a class-sorted push would give one class each.
        image_bytes = max(path.stat().st_size for path in folder.rglob("*.png"))
        shard_mb = f"{BATCH * image_bytes / 2**20:.6f}"
        pushed = CliRunner().invoke(
            main, ["data", "push", str(folder), source, "--shard-mb", shard_mb]
        )
        assert pushed.exit_code == 0, pushed.output
        # The push itself mixes classes: no shard holds a single class.
        shards = shard_labels(source)
        assert len(shards) >= 2 * NUM_CLASSES
        for labels in shards:
            assert len(np.unique(labels)) >= 2, labels
    assert_mixed_and_reshuffled(worker_epochs(source))


def shard_labels(source: str) -> list[np.ndarray]:
    """The label column of every pushed shard, in stored row order."""
    filesystem, root = filesystem_for(source)
    return [
        pq.read_table(f"{root}/{shard.path}", filesystem=filesystem, columns=["label"])[
            "label"
        ].to_numpy()
        for shard in read_manifest(source).shards
    ]


def coordinate_image(size: int = 64) -> np.ndarray:
    """R encodes x and G encodes y (4 levels a pixel), so a crop's box can be read back."""
    x = np.arange(size, dtype=np.uint8) * (256 // size)
    image = np.zeros((size, size, 3), np.uint8)
    image[..., 0] = x[None, :]
    image[..., 1] = x[:, None]
    return image


def crop_area_share(crop: np.ndarray, size: int = 64) -> float:
    """The share of the source image that a crop shows, from the coordinates it contains."""
    step = 256 // size
    width = (int(crop[..., 0].max()) - int(crop[..., 0].min())) / step + 1
    height = (int(crop[..., 1].max()) - int(crop[..., 1].min())) / step + 1
    return width * height / size**2


def assert_crops_like_mae(crops: np.ndarray) -> None:
    areas = np.array([crop_area_share(crop) for crop in crops])
    # Bicubic resampling blurs the box edges by a pixel or so: a small tolerance.
    assert areas.min() >= 0.2 - 0.05 and areas.max() <= 1.0 + 1e-9, areas
    assert areas.min() < 0.5 and areas.max() > 0.7  # crops really vary, down to small ones
    # About half are flipped: x then decreases from left to right.
    flipped = np.mean([crop[16, -1, 0] < crop[16, 0, 0] for crop in crops])
    assert 0.2 < flipped < 0.8


def test_builtin_augmentation_is_randomresizedcrop_and_flip():
    images = np.repeat(coordinate_image()[None], 200, axis=0)
    crops = augment_pixels(images, 32, Augmentation(), np.random.default_rng(0))
    assert crops.shape == (200, 32, 32, 3)
    assert_crops_like_mae(crops)
    whole = augment_pixels(images[:4], 32, Augmentation(crop_scale=None, hflip=False), None)
    assert all(crop_area_share(crop) > 0.9 for crop in whole)


def test_folder_crops_reveal_their_box_and_change_between_epochs(ray_session, tmp_path):
    folder = tmp_path / "coords" / "only_class"
    folder.mkdir(parents=True)
    for index in range(64):
        Image.fromarray(coordinate_image()).save(folder / f"{index:02d}.png")
    dataset = build_dataset(str(tmp_path / "coords"), img_size=32, augmentation=Augmentation())

    def epoch() -> dict[str, np.ndarray]:
        return {row["id"]: row["image"] for row in dataset.iter_rows()}

    first, second = epoch(), epoch()
    assert_crops_like_mae(np.stack(list(first.values())))
    changed = [not np.array_equal(first[key], second[key]) for key in first]
    assert sum(changed) >= 60  # each image gets a new crop in the next epoch
    # Evaluation reads (no augmentation) are the whole image, the same every time.
    plain = build_dataset(str(tmp_path / "coords"), img_size=32)
    assert all(crop_area_share(row["image"]) > 0.9 for row in plain.iter_rows())


def test_builtin_stream_is_cropped_differently_every_epoch(ray_session):
    dataset = build_dataset("shapes", img_size=16, num_images=64, augmentation=Augmentation())
    first = {row["id"]: row["image"] for row in dataset.iter_rows()}
    second = {row["id"]: row["image"] for row in dataset.iter_rows()}
    assert first.keys() == second.keys() and len(first) == 64
    assert sum(not np.array_equal(first[key], second[key]) for key in first) >= 60


def test_push_colors_writes_colors_with_their_class_names(ray_session, tmp_path):
    dest = tmp_path / "colors"
    pushed = CliRunner().invoke(main, ["data", "push", "colors", str(dest), "--num-images", "40"])
    assert pushed.exit_code == 0, pushed.output
    manifest = read_manifest(str(dest))
    assert manifest.class_names == list(COLOR_CLASSES) and manifest.num_rows == 40
    rows = build_dataset(str(dest), img_size=8).take_all()
    base_colours = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0]], float)
    for row in rows:
        mean = row["image"].reshape(-1, 3).mean(axis=0) / 255
        # The brightest channels are those of the class's base colour (red, green, ...).
        assert np.array_equal(mean > 0.3, base_colours[row["label"]] > 0), (row["id"], mean)


def test_push_keeps_jpeg_bytes_unless_asked_to_reencode(tmp_path):
    folder = tmp_path / "jpegs" / "cat"
    folder.mkdir(parents=True)
    buffer = io.BytesIO()
    Image.fromarray(coordinate_image()).save(buffer, format="JPEG")
    (folder / "a.jpg").write_bytes(buffer.getvalue())
    for extra, expect_same in (([], True), (["--format", "png"], False)):
        dest = tmp_path / f"pushed{len(extra)}"
        result = CliRunner().invoke(
            main, ["data", "push", str(tmp_path / "jpegs"), str(dest), *extra]
        )
        assert result.exit_code == 0, result.output
        stored = pq.read_table(dest / read_manifest(str(dest)).shards[0].path)["image"][0].as_py()
        assert (stored == buffer.getvalue()) is expect_same
        assert stored[:4] == (b"\xff\xd8\xff\xe0" if expect_same else b"\x89PNG")


def test_data_cpus_are_the_cpus_the_workers_leave(ray_session):
    """Ray Data's CPUs are the cluster's minus the workers' reservation (2 CPUs here), never
    a hand-tuned share; too little left is refused in one line."""
    from orchestrator.config.run import ScalingSpec
    from orchestrator.fit.ray_setup import data_cpus

    assert data_cpus(ScalingSpec(num_workers=2, cpus_per_worker=0.5)) == 1
    assert data_cpus(ScalingSpec(num_workers=1, cpus_per_worker=0.25)) == 1.75
    # Workers that do not fit yet (an autoscaling cluster adds nodes): Ray Data decides.
    assert data_cpus(ScalingSpec(num_workers=4, cpus_per_worker=1)) is None
    with pytest.raises(ValueError, match=r"leaving 0.5 for Ray Data.*allowed") as refused:
        data_cpus(ScalingSpec(num_workers=3, cpus_per_worker=0.5))
    assert "\n" not in str(refused.value)
