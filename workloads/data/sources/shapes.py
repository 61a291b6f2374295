"""Procedurally generated labelled shape images: a built-in dataset that needs no download.

Every image is a pure function of (seed, index): its random generator is seeded with exactly
that pair, so image i is identical whichever batch, worker or process renders it, and a
dataset of any size can be generated lazily inside Ray without the driver holding it.

Geometry is drawn in normalised coordinates ([-1, 1] across the image), so the same index
gives the same picture at every `img_size`; only the per-pixel noise depends on the size.
Backgrounds are textured (noise, stripes or a gradient) and shapes vary in position, scale,
rotation and colour, so telling the ten classes apart is a real (if small) vision task.
"""

from __future__ import annotations

import numpy as np

from workloads.data.builtin import GeneratedSource

SHAPE_CLASSES: tuple[str, ...] = (
    "circle",
    "square",
    "triangle",
    "cross",
    "ring",
    "horizontal_bars",
    "vertical_bars",
    "diamond",
    "star",
    "ellipse",
)

# Labels are balanced per block of len(SHAPE_CLASSES) consecutive indices (a seeded
# permutation of the classes), so even a small evaluation split has every class equally often.
_LABEL_STREAM = 1  # third seed word that keeps the label generator apart from image generators
_MAX_ROTATION = np.pi / 15  # +-12 degrees: keeps squares and diamonds (45 degrees apart) distinct
_MIN_COLOUR_DISTANCE = 0.35  # mean |RGB difference| between shape and background, in [0, 1]
_PIXEL_NOISE_STD = 0.04
_COLOUR_CANDIDATES = 8  # tries at a contrasting shape colour before the fixed fallback
_NUM_WAVES = 4  # waves summed into the smooth-noise background


def render_shapes(indices: np.ndarray, img_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Render the images with the given indices.

    Returns images uint8 (n, img_size, img_size, 3) and labels int64 (n,); both depend only
    on (seed, index) for each index, never on the other indices in the call.
    """
    if img_size < 1:
        raise ValueError(f"img_size must be positive, got {img_size}")
    indices = np.asarray(indices, dtype=np.int64).reshape(-1)
    labels = shape_labels(indices, seed)
    num_images = len(indices)
    # Random numbers are drawn per image (that is what makes an image independent of its
    # batch): first a fixed-length vector of uniforms for the layout, then the pixel noise, so
    # an index keeps its layout at every img_size. The pixel maths then runs once per batch.
    uniforms = np.empty((num_images, _NUM_UNIFORMS))
    noise = np.empty((num_images, img_size, img_size, 3), dtype=np.float32)
    for row, index in enumerate(indices):
        rng = np.random.default_rng([seed, int(index)])
        uniforms[row] = rng.random(_NUM_UNIFORMS)
        noise[row] = rng.standard_normal((img_size, img_size, 3), dtype=np.float32)
    image = _paint(_layout(uniforms), labels, img_size)  # (n, H, W, 3) float32
    image += noise * np.float32(_PIXEL_NOISE_STD)
    np.clip(image, 0.0, 1.0, out=image)
    return (image * np.float32(255.0) + np.float32(0.5)).astype(np.uint8), labels


def shape_labels(indices: np.ndarray, seed: int) -> np.ndarray:
    """Class label (int64) of each index, without rendering anything."""
    indices = np.asarray(indices, dtype=np.int64).reshape(-1)
    num_classes = len(SHAPE_CLASSES)
    blocks = indices // num_classes
    labels = np.empty(len(indices), dtype=np.int64)
    for block in np.unique(blocks):
        in_block = blocks == block
        order = np.random.default_rng([seed, int(block), _LABEL_STREAM]).permutation(num_classes)
        labels[in_block] = order[indices[in_block] % num_classes]
    return labels


# How many uniforms each layout parameter takes from an image's vector, in drawing order.
_UNIFORM_FIELDS = {
    "radius": 1,
    "centre": 2,
    "angle": 1,
    "background_colours": 6,
    "colour_candidates": 3 * _COLOUR_CANDIDATES,
    "texture_kind": 1,
    "texture_direction": 1,
    "wave_frequencies": 2 * _NUM_WAVES,
    "wave_signs": 2 * _NUM_WAVES,
    "wave_phases": _NUM_WAVES,
    "stripe_frequency": 1,
    "stripe_phase": 1,
    "shading_strength": 1,
    "shading_direction": 1,
}
_NUM_UNIFORMS = sum(_UNIFORM_FIELDS.values())


def _layout(uniforms: np.ndarray) -> dict[str, np.ndarray]:
    """Map each image's uniforms in [0, 1) to its layout parameters.  # (n, K) -> (n, ...)"""
    fields, start = {}, 0
    for name, size in _UNIFORM_FIELDS.items():
        fields[name] = uniforms[:, start : start + size]
        start += size

    def between(name: str, low: float, high: float) -> np.ndarray:
        return low + (high - low) * fields[name]

    radius = between("radius", 0.35, 0.7)[:, 0]
    background_colours = fields["background_colours"].reshape(-1, 2, 3)
    signs = np.where(fields["wave_signs"] < 0.5, -1.0, 1.0)
    layout = {
        "radius": radius,
        "centre": (2.0 * fields["centre"] - 1.0) * (1.0 - radius[:, None]) * 0.9,
        "angle": between("angle", -_MAX_ROTATION, _MAX_ROTATION)[:, 0],
        "background_colours": background_colours,
        "shape_colour": _contrasting_colour(
            fields["colour_candidates"].reshape(-1, _COLOUR_CANDIDATES, 3),
            background_colours.mean(axis=1),
        ),
        "texture_kind": (fields["texture_kind"][:, 0] * 3).astype(np.int64),
        "texture_direction": between("texture_direction", 0.0, 2.0 * np.pi)[:, 0],
        "wave_frequencies": between("wave_frequencies", 1.0, 4.0).reshape(-1, _NUM_WAVES, 2)
        * signs.reshape(-1, _NUM_WAVES, 2),
        "wave_phases": between("wave_phases", 0.0, 2.0 * np.pi),
        "stripe_frequency": between("stripe_frequency", 2.0, 6.0)[:, 0],
        "stripe_phase": between("stripe_phase", 0.0, 2.0 * np.pi)[:, 0],
        "shading_strength": between("shading_strength", 0.0, 0.2)[:, 0],
        "shading_direction": between("shading_direction", 0.0, 2.0 * np.pi)[:, 0],
    }
    # float32 from here on: the pixel maths is memory-bound and needs no more precision.
    return {
        name: values if name == "texture_kind" else values.astype(np.float32)
        for name, values in layout.items()
    }


def _contrasting_colour(candidates: np.ndarray, background_mean: np.ndarray) -> np.ndarray:
    """The first candidate colour far enough from the background for the shape to stay
    visible; the colour "opposite" the background when none is.  # (n, C, 3) -> (n, 3)"""
    distances = np.abs(candidates - background_mean[:, None]).mean(axis=2)  # (n, C)
    far_enough = distances >= _MIN_COLOUR_DISTANCE
    first = far_enough.argmax(axis=1)
    chosen = candidates[np.arange(len(candidates)), first]
    opposite = 1.0 - np.round(background_mean)
    return np.where(far_enough.any(axis=1)[:, None], chosen, opposite)


def _paint(layout: dict[str, np.ndarray], labels: np.ndarray, img_size: int) -> np.ndarray:
    """Float images in about [0, 1] from per-image layouts.  # (n, H, W, 3)"""
    # Pixel-centre coordinates in [-1, 1], y pointing down like image rows.
    axis = ((np.arange(img_size) + 0.5) / img_size * 2.0 - 1.0).astype(np.float32)  # (H,) == (W,)
    grid_x, grid_y = axis[None, None, :], axis[None, :, None]

    def per_image(key: str) -> np.ndarray:  # (n,) -> (n, 1, 1) to broadcast over pixels
        return layout[key][:, None, None]

    # Shape-local coordinates: centred, rotated, and scaled so the shape spans [-1, 1].
    cos_a, sin_a = np.cos(per_image("angle")), np.sin(per_image("angle"))
    dx = grid_x - layout["centre"][:, 0, None, None]  # (n, 1, W)
    dy = grid_y - layout["centre"][:, 1, None, None]  # (n, H, 1)
    u = (cos_a * dx + sin_a * dy) / per_image("radius")  # (n, H, W)
    v = (-sin_a * dx + cos_a * dy) / per_image("radius")
    mask = np.zeros(u.shape, dtype=bool)
    for label, shape_mask in enumerate(_SHAPE_MASKS):
        of_class = labels == label
        if of_class.any():
            mask[of_class] = shape_mask(u[of_class], v[of_class])

    texture = _background_texture(layout, axis)[..., None]  # (n, H, W, 1)
    colours = layout["background_colours"][:, None, None]  # (n, 1, 1, 2, 3)
    background = colours[..., 0, :] + texture * (colours[..., 1, :] - colours[..., 0, :])
    # A gentle light gradient over the shape so its colour is not perfectly flat.
    direction = per_image("shading_direction")
    shading = 1.0 + per_image("shading_strength") * (
        np.cos(direction) * grid_x + np.sin(direction) * grid_y
    )
    foreground = layout["shape_colour"][:, None, None] * shading[..., None]
    image = np.empty((len(labels), img_size, img_size, 3), dtype=np.float32)
    image[:] = background
    np.copyto(image, foreground, where=mask[..., None])
    return image


def _background_texture(layout: dict[str, np.ndarray], axis: np.ndarray) -> np.ndarray:
    """Blend weight in [0, 1] per pixel: smooth noise, stripes or a gradient.  # (n, H, W)"""
    kind = layout["texture_kind"]
    texture = np.empty((len(kind), len(axis), len(axis)), dtype=np.float32)

    plasma = kind == 0  # sum of random low-frequency waves: cheap smooth noise
    frequencies = np.pi * layout["wave_frequencies"][plasma]  # (m, waves, 2)
    waves = _plane_waves(frequencies, layout["wave_phases"][plasma], axis)
    texture[plasma] = np.clip(waves / (2.0 * _NUM_WAVES) + 0.5, 0.0, 1.0)

    stripes = kind == 1
    direction = layout["texture_direction"][stripes]
    wave_number = np.pi * layout["stripe_frequency"][stripes]
    frequencies = np.stack([np.cos(direction), np.sin(direction)], axis=-1) * wave_number[:, None]
    phases = layout["stripe_phase"][stripes, None]
    texture[stripes] = 0.5 + 0.5 * _plane_waves(frequencies[:, None], phases, axis)

    gradient = kind == 2
    direction = layout["texture_direction"][gradient, None, None]
    along = np.cos(direction) * axis[None, None, :] + np.sin(direction) * axis[None, :, None]
    texture[gradient] = np.clip(along / 3.0 + 0.5, 0.0, 1.0)
    return texture


def _plane_waves(frequencies: np.ndarray, phases: np.ndarray, axis: np.ndarray) -> np.ndarray:
    """Sum over k of sin(fx_k * x + fy_k * y + phase_k) on the pixel grid.  # (m, H, W)

    Computed as sin(a) cos(b) + cos(a) sin(b) with a from x and b from y: two small batched
    matrix products instead of a sine per pixel per wave."""
    along_x = frequencies[..., 0, None] * axis  # (m, k, W)
    along_y = frequencies[..., 1, None] * axis + phases[..., None]  # (m, k, H)
    return np.einsum("mkw,mkh->mhw", np.sin(along_x), np.cos(along_y)) + np.einsum(
        "mkw,mkh->mhw", np.cos(along_x), np.sin(along_y)
    )


# Masks in shape-local coordinates (u right, v down), each fitting inside [-1, 1]^2.


def _circle(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return u * u + v * v <= 1.0


def _square(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.maximum(np.abs(u), np.abs(v)) <= 0.8


def _triangle(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    # Apex at the top (v = -1), flat base at v = 0.8.
    return (v <= 0.8) & (np.abs(u) <= (v + 1.0) * 0.55)


def _cross(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    inside = np.maximum(np.abs(u), np.abs(v)) <= 1.0
    return inside & ((np.abs(u) <= 0.28) | (np.abs(v) <= 0.28))


def _ring(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    squared_radius = u * u + v * v
    return (squared_radius <= 1.0) & (squared_radius >= 0.55**2)


def _bars(across: np.ndarray, along: np.ndarray) -> np.ndarray:
    # Three bars of width 0.4 with gaps of 0.4, stacked along `across`.
    inside = (np.abs(across) <= 1.0) & (np.abs(along) <= 1.0)
    return inside & (np.floor((across + 1.0) * 2.5) % 2 == 0)


def _horizontal_bars(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return _bars(v, u)


def _vertical_bars(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return _bars(u, v)


def _diamond(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.abs(u) + np.abs(v) <= 1.0


def _star(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    # Five-pointed star: the allowed radius swings between 0.4 (notches) and 1.0 (tips).
    polar_angle = np.arctan2(u, -v)  # 0 at the top point
    phase = (polar_angle * 5.0 / (2.0 * np.pi)) % 1.0
    tip_closeness = np.abs(phase * 2.0 - 1.0)  # 1 at a tip, 0 half-way between tips
    return np.sqrt(u * u + v * v) <= 0.4 + 0.6 * tip_closeness**2


def _ellipse(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return u * u + (v / 0.5) ** 2 <= 1.0


_SHAPE_MASKS = (
    _circle,
    _square,
    _triangle,
    _cross,
    _ring,
    _horizontal_bars,
    _vertical_bars,
    _diamond,
    _star,
    _ellipse,
)
assert len(_SHAPE_MASKS) == len(SHAPE_CLASSES)


SOURCE = GeneratedSource("shapes", SHAPE_CLASSES, render_shapes)
