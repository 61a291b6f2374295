"""Built-in data sources: deterministic generated shapes, bundled digits, image folders."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from workloads.data import build_dataset, builtin_names, describe_source, validate_source
from workloads.data.sources.digits import (
    DIGIT_CLASSES,
    NUM_DIGIT_IMAGES,
    digits_split_indices,
    load_digit_images,
)
from workloads.data.sources.folder import folder_class_names, folder_image_files
from workloads.data.sources.shapes import SHAPE_CLASSES, render_shapes
from workloads.data.sources.shapes import SOURCE as SHAPES

BUILTIN_DATASETS = builtin_names()


def shapes_split_indices(split: str, num_images: int | None = None) -> np.ndarray:
    return SHAPES.split_indices(split, num_images)


# --- shapes, without Ray -------------------------------------------------------------------


def test_shapes_image_depends_only_on_seed_and_index():
    indices = np.arange(100, 300)
    whole_images, whole_labels = render_shapes(indices, img_size=24, seed=5)
    # The same indices in other batches: uneven chunks, reversed order, one at a time.
    chunked = [render_shapes(chunk, img_size=24, seed=5) for chunk in np.array_split(indices, 29)]
    reversed_images, reversed_labels = render_shapes(indices[::-1], img_size=24, seed=5)
    alone_images, alone_labels = render_shapes(np.array([142]), img_size=24, seed=5)

    np.testing.assert_array_equal(np.concatenate([c[0] for c in chunked]), whole_images)
    np.testing.assert_array_equal(np.concatenate([c[1] for c in chunked]), whole_labels)
    np.testing.assert_array_equal(reversed_images[::-1], whole_images)
    np.testing.assert_array_equal(reversed_labels[::-1], whole_labels)
    np.testing.assert_array_equal(alone_images[0], whole_images[42])
    assert alone_labels[0] == whole_labels[42]


def test_shapes_differ_between_seeds_and_between_indices():
    images_seed0, _ = render_shapes(np.arange(8), img_size=16, seed=0)
    images_seed1, _ = render_shapes(np.arange(8), img_size=16, seed=1)

    assert not np.array_equal(images_seed0, images_seed1)
    assert len({image.tobytes() for image in images_seed0}) == 8


@pytest.mark.parametrize("img_size", [8, 32, 57])
def test_shapes_shape_and_dtype(img_size):
    images, labels = render_shapes(np.arange(5), img_size=img_size, seed=0)

    assert images.shape == (5, img_size, img_size, 3)
    assert images.dtype == np.uint8
    assert labels.shape == (5,) and labels.dtype == np.int64


def test_shapes_cover_every_class_evenly():
    _, labels = render_shapes(np.arange(300), img_size=8, seed=3)

    assert len(SHAPE_CLASSES) == 10
    counts = np.bincount(labels, minlength=len(SHAPE_CLASSES))
    assert len(counts) == len(SHAPE_CLASSES)
    assert (counts == 30).all()  # balanced per block of 10 consecutive indices


def test_shapes_are_not_trivial_to_tell_apart():
    # Textured backgrounds and random colours: pixel statistics alone must not give the class.
    images, labels = render_shapes(np.arange(400), img_size=16, seed=0)
    mean_colour = images.reshape(len(images), -1, 3).mean(axis=1)
    spread_within_class = np.mean([mean_colour[labels == c].std(axis=0).mean() for c in range(10)])
    assert spread_within_class > 20.0


def test_shapes_backgrounds_are_textured_not_flat():
    # Opposite corners are (almost always) background; 8x8 means average the pixel noise out,
    # so on a flat background they would agree to within a grey level or two.
    images, _ = render_shapes(np.arange(200), img_size=64, seed=0)
    top_left = images[:, :8, :8].mean(axis=(1, 2))  # (n, 3)
    bottom_right = images[:, -8:, -8:].mean(axis=(1, 2))
    assert np.median(np.abs(top_left - bottom_right).mean(axis=1)) > 8.0


def test_same_index_keeps_its_layout_at_every_size():
    small, _ = render_shapes(np.arange(20), img_size=16, seed=0)
    large, _ = render_shapes(np.arange(20), img_size=64, seed=0)

    downsampled = large.reshape(20, 16, 4, 16, 4, 3).mean(axis=(2, 4))
    same_index_gap = np.abs(downsampled - small).mean()
    other_index_gap = np.abs(downsampled - np.roll(small, 1, axis=0)).mean()
    assert same_index_gap < 0.25 * other_index_gap


# --- digits, without Ray -------------------------------------------------------------------


def test_digits_shape_dtype_range_and_classes():
    images, labels = load_digit_images(img_size=16)

    assert images.shape == (NUM_DIGIT_IMAGES, 16, 16, 3)
    assert images.dtype == np.uint8 and labels.dtype == np.int64
    assert images.max() == 255 and images.min() == 0  # 0..16 rescaled to the full range
    np.testing.assert_array_equal(images[..., 0], images[..., 2])  # grey in every channel
    assert sorted(set(labels.tolist())) == list(range(len(DIGIT_CLASSES)))


def test_digits_selected_indices_match_the_full_set():
    all_images, all_labels = load_digit_images(img_size=12)
    some_images, some_labels = load_digit_images(img_size=12, indices=np.array([5, 0, 1000]))

    np.testing.assert_array_equal(some_images, all_images[[5, 0, 1000]])
    np.testing.assert_array_equal(some_labels, all_labels[[5, 0, 1000]])


# --- splits and metadata -------------------------------------------------------------------


def test_train_and_val_splits_are_disjoint():
    shapes_train = set(shapes_split_indices("train", 100_000).tolist())
    shapes_val = set(shapes_split_indices("val").tolist())
    assert shapes_train.isdisjoint(shapes_val) and len(shapes_val) == 512

    digits_train = digits_split_indices("train")
    digits_val = digits_split_indices("val")
    assert set(digits_train.tolist()).isdisjoint(digits_val.tolist())
    assert len(digits_train) + len(digits_val) == NUM_DIGIT_IMAGES
    np.testing.assert_array_equal(digits_val, digits_split_indices("val"))  # fixed split


def test_describe_builtin_sources_without_building():
    shapes = describe_source("shapes", split="val")
    digits = describe_source("digits", num_images=100)

    assert (shapes.num_rows, shapes.class_names) == (512, list(SHAPE_CLASSES))
    assert digits.num_rows == 100 and digits.num_classes == 10


def test_shapes_train_split_cannot_grow_into_val():
    with pytest.raises(ValueError, match="overlap"):
        describe_source("shapes", num_images=20_000_000)


def test_asking_for_more_digits_than_the_split_holds_is_an_error():
    with pytest.raises(ValueError, match="digits val split has 359 images"):
        describe_source("digits", split="val", num_images=1000)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("imagenet", "'imagenet'"),
        ("/no/such/folder", "'/no/such/folder'"),
        ("gs://bucket/images", "unsupported location"),
    ],
)
def test_bad_source_raises_naming_it(source, expected):
    with pytest.raises(ValueError, match=expected) as raised:
        validate_source(source)
    assert source in str(raised.value)
    assert "shapes" in str(raised.value)  # the message lists what is allowed
    assert "\n" not in str(raised.value)


def test_folder_without_class_folders_is_rejected(tmp_path):
    (tmp_path / "empty_class").mkdir()
    (tmp_path / "loose.png").write_bytes(b"")

    with pytest.raises(ValueError, match="no class sub-folders"):
        validate_source(str(tmp_path))


def test_builtin_names_are_valid_sources():
    for name in BUILTIN_DATASETS:
        validate_source(name)


# --- Ray datasets --------------------------------------------------------------------------


def test_shapes_dataset_matches_render_shapes(ray_session):
    dataset = build_dataset("shapes", img_size=16, num_images=64, seed=7)
    rows = sorted(dataset.take_all(), key=lambda row: int(row["id"].rsplit("/", 1)[1]))

    assert len(rows) == 64
    assert set(rows[0]) == {"image", "label", "id", "ok"} and all(row["ok"] for row in rows)
    assert [row["id"] for row in rows] == [f"shapes/train/{i}" for i in range(64)]
    expected_images, expected_labels = render_shapes(np.arange(64), img_size=16, seed=7)
    np.testing.assert_array_equal(np.stack([row["image"] for row in rows]), expected_images)
    np.testing.assert_array_equal([row["label"] for row in rows], expected_labels)


def test_shapes_val_dataset_renders_other_images(ray_session):
    train = build_dataset("shapes", img_size=8, num_images=4)
    val = build_dataset("shapes", img_size=8, split="val", num_images=4)
    train_ids = {row["id"] for row in train.take_all()}
    val_rows = val.take_all()

    assert train_ids.isdisjoint(row["id"] for row in val_rows)
    train_pixels = {image.tobytes() for image in render_shapes(np.arange(4), 8, 0)[0]}
    assert train_pixels.isdisjoint(row["image"].tobytes() for row in val_rows)


def test_digits_dataset(ray_session):
    rows = build_dataset("digits", img_size=8, split="val", num_images=50).take_all()

    assert len(rows) == 50
    first = rows[0]
    assert first["image"].shape == (8, 8, 3) and first["image"].dtype == np.uint8
    assert first["id"].startswith("digits/val/")
    index = int(first["id"].rsplit("/", 1)[1])
    expected_image, expected_label = load_digit_images(8, indices=np.array([index]))
    np.testing.assert_array_equal(first["image"], expected_image[0])
    assert first["label"] == expected_label[0]


def _write_png(path, colour):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (10, 7), colour).save(path)


def test_folder_dataset_labels_by_class_folder(ray_session, tmp_path):
    for i in range(3):
        _write_png(tmp_path / "dog" / f"{i}.png", (0, 0, 255))
    for i in range(2):
        _write_png(tmp_path / "cat" / f"{i}.png", (255, 0, 0))
    (tmp_path / "notes.txt").write_text("not an image")

    assert folder_class_names(str(tmp_path)) == ["cat", "dog"]
    info = describe_source(str(tmp_path))
    assert (info.num_rows, info.class_names, info.kind) == (5, ["cat", "dog"], "folder")

    rows = build_dataset(str(tmp_path), img_size=6).take_all()
    assert len(rows) == 5
    assert set(rows[0]) == {"image", "label", "id", "ok"} and all(row["ok"] for row in rows)
    for row in rows:
        class_name = row["id"].split("/")[0]
        assert row["label"] == ["cat", "dog"].index(class_name)
        assert row["image"].shape == (6, 6, 3) and row["image"].dtype == np.uint8
        expected_red = 255 if class_name == "cat" else 0
        assert row["image"][..., 0].mean() == pytest.approx(expected_red, abs=2)
    assert sorted(row["id"] for row in rows)[0] == "cat/0.png"


def test_folder_with_split_folders_reads_the_asked_split(ray_session, tmp_path):
    _write_png(tmp_path / "train" / "cat" / "a.png", (255, 0, 0))
    _write_png(tmp_path / "train" / "dog" / "b.png", (0, 0, 255))
    _write_png(tmp_path / "val" / "dog" / "c.png", (0, 0, 255))

    rows = build_dataset(str(tmp_path), img_size=4, split="val").take_all()

    # "dog" keeps label 1 in val although val has no "cat" folder: labels agree across splits.
    assert [(row["id"], row["label"]) for row in rows] == [("dog/c.png", 1)]
    assert describe_source(str(tmp_path), split="val").class_names == ["cat", "dog"]


def test_truncated_folder_keeps_a_fixed_subset_across_classes(tmp_path):
    for class_name in ("cat", "dog"):
        for i in range(10):
            (tmp_path / class_name).mkdir(exist_ok=True)
            (tmp_path / class_name / f"{i}.png").write_bytes(b"")
    (tmp_path / "dog" / "_ignored.png").write_bytes(b"")

    subset = folder_image_files(str(tmp_path), num_images=10)

    assert len(folder_image_files(str(tmp_path))) == 20
    assert subset == folder_image_files(str(tmp_path), num_images=10)
    assert {os.path.basename(os.path.dirname(path)) for path in subset} == {"cat", "dog"}
    assert describe_source(str(tmp_path), num_images=10).num_rows == 10


def test_folder_without_a_val_split_refuses_to_reuse_train_images(tmp_path):
    _write_png(tmp_path / "cat" / "a.png", (255, 0, 0))

    with pytest.raises(ValueError, match="no 'val' split folder"):
        describe_source(str(tmp_path), split="val")
