"""The embedded data: deterministic, balanced regimes, classes that are colour pairs, object sizes
that separate the regimes, and the data set's dictionaries."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dr.data import DataError, build_dataset
from dr.data.synthetic import (
    CLASS_NAMES,
    DESIGN,
    IMAGE_SIZE,
    PAIRS,
    PALETTE,
    REGIMES,
    SyntheticShapes,
    generate,
    generate_sample,
    generate_sized,
)


def nearest_colour(image: np.ndarray) -> np.ndarray:
    """(H, W) index of the palette colour nearest to each pixel."""
    return np.argmin(((image[:, :, None, :] - PALETTE[None, None]) ** 2).sum(-1), axis=-1)


def components(mask: np.ndarray) -> int:
    """Number of 4-connected components of a boolean mask (a small flood fill: no scipy needed)."""
    seen = np.zeros_like(mask, bool)
    count = 0
    for y, x in zip(*np.nonzero(mask)):
        if seen[y, x]:
            continue
        count += 1
        stack = [(y, x)]
        seen[y, x] = True
        while stack:
            cy, cx = stack.pop()
            for ny, nx in ((cy + 1, cx), (cy - 1, cx), (cy, cx + 1), (cy, cx - 1)):
                if 0 <= ny < mask.shape[0] and 0 <= nx < mask.shape[1] and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    stack.append((ny, nx))
    return count


def test_every_class_is_a_pair_of_colours_and_every_colour_is_in_two_classes():
    assert CLASS_NAMES == ("background", "red-green", "red-blue", "green-blue")
    assert PAIRS == ((0, 1), (0, 2), (1, 2))
    for colour in range(len(PALETTE)):
        assert sum(colour in pair for pair in PAIRS) == 2  # one colour alone never tells the class


def test_generation_is_deterministic_and_streams_are_disjoint():
    for index in (0, 1, 2, 37):
        a, b = generate_sample(3, "train", index), generate_sample(3, "train", index)
        assert np.array_equal(a.image, b.image) and np.array_equal(a.label, b.label)
        assert (a.regime, a.size) == (b.regime, b.size)
        image, label, regime = generate(3, "train", index)
        assert np.array_equal(image, a.image) and np.array_equal(label, a.label) and regime == a.regime
    assert not np.array_equal(generate_sample(3, "train", 5).image, generate_sample(3, "val", 5).image)
    assert not np.array_equal(generate_sample(3, "train", 5).image, generate_sample(4, "train", 5).image)
    with pytest.raises(DataError, match="choose train or val"):
        generate_sample(0, "test", 0)


def test_images_are_in_range_and_regimes_cycle():
    for index in range(9):
        s = generate_sample(0, "val", index)
        assert s.image.shape == (*IMAGE_SIZE, 3) and s.image.dtype == np.float32
        assert 0.0 <= s.image.min() and s.image.max() <= 1.0
        assert s.label.shape == IMAGE_SIZE and s.label.max() < len(CLASS_NAMES)
        assert s.regime == REGIMES[index % 3]


def test_the_regimes_differ_as_documented():
    """small: 6-10 separate objects of 16-26 px; large: one object 2-3 x the image side leaving
    10-35% (roughly) to the background; mixed: one large object and 3-5 small ones."""
    side = min(IMAGE_SIZE)
    lo, hi = DESIGN["small_diameter"]
    for index in range(36):
        s = generate_sample(1, "train", index)
        objects = s.label > 0
        if s.regime == "small":
            assert DESIGN["aspect"][0] * lo <= s.size <= hi
            count = components(objects)
            assert DESIGN["small_count"][0] <= count <= DESIGN["small_count"][1]
            assert objects.mean() < 0.35
        elif s.regime == "large":
            assert s.size >= DESIGN["aspect"][0] * DESIGN["large_diameter"][0] * side
            assert components(objects) == 1
            assert 0.03 <= 1 - objects.mean() <= 0.5  # the border leaves part of the image to the background
        else:
            assert s.size > hi  # area-weighted: the large object dominates
            # the large object plus 3-5 small ones on top (those at the large object's border may touch it)
            assert len(np.unique(s.label)) >= 2


def test_an_object_is_painted_in_the_two_colours_of_its_class():
    """Inside each object, the pixels' nearest palette colours are (rim and splashes aside) the
    two of its class pair, and both are present; small objects have no splash of a third colour."""
    for index in range(30):
        s = generate_sample(2, "train", index)
        nearest = nearest_colour(s.image)
        for cls in range(1, len(CLASS_NAMES)):
            inside = s.label == cls
            if inside.sum() < 50:
                continue
            vivid = inside & (s.image.max(-1) > 0.5)  # not the dark rim
            share = np.isin(nearest[vivid], PAIRS[cls - 1]).mean()
            limit = 0.97 if s.regime == "small" else 1 - DESIGN["splash_share"] - 0.03
            assert share >= limit, (index, s.regime, cls, share)
            counts = np.bincount(nearest[vivid], minlength=len(PALETTE))[list(PAIRS[cls - 1])]
            assert counts.min() > 0.02 * counts.sum()  # both colours are visible


def test_classes_and_regimes_are_balanced():
    pixels = np.zeros(len(CLASS_NAMES))
    sizes = {r: [] for r in REGIMES}
    for index in range(150):
        s = generate_sample(0, "train", index)
        pixels += np.bincount(s.label.ravel(), minlength=len(CLASS_NAMES))
        sizes[s.regime].append(s.size)
    objects = pixels[1:] / pixels[1:].sum()
    assert objects.min() > 0.2  # each pair class holds a fair share of the object pixels
    assert 0.1 < pixels[0] / pixels.sum() < 0.6
    assert max(sizes["small"]) < min(sizes["mixed"]) and max(sizes["small"]) < min(sizes["large"])


def test_the_data_set_gives_normalised_tensors_with_regime_and_size():
    train = SyntheticShapes("train", seed=0, size=10, train=True, crop=(96, 96))
    torch.manual_seed(0)
    sample = train[4]
    assert sample["image"].shape == (3, 96, 96) and sample["label"].shape == (96, 96)
    assert sample["label"].dtype == torch.int64 and sample["regime"] == REGIMES[4 % 3]
    assert sample["size"] == pytest.approx(generate_sample(0, "train", 4).size)
    val = SyntheticShapes("val", seed=0)
    assert len(val) == 1440
    plain = val[2]
    raw = torch.from_numpy(generate_sample(0, "val", 2).image).permute(2, 0, 1)
    assert torch.allclose(plain["image"] * val.std + val.mean, raw, atol=1e-6)
    with pytest.raises(IndexError):
        val[1440]
    with pytest.raises(DataError, match="larger than the synthetic images"):
        SyntheticShapes("train", crop=(200, 200))
    assert build_dataset("synthetic", "val", size=3)[0]["name"] == "synthetic-val-00000"


def test_sized_images_have_objects_of_the_asked_diameter_on_one_background():
    """The scale explorer's images: the object size follows the slider, the background does not."""
    sizes = []
    for diameter in (16, 24, 40, 64, 96, 160, 256, 384):
        s = generate_sized(diameter, seed=1)
        assert s.regime == "sized" and s.label.any()
        lo = DESIGN["aspect"][0] * 0.9 * diameter
        assert lo <= s.size <= 1.1 * diameter, (diameter, s.size)
        sizes.append(s.size)
    assert sizes == sorted(sizes)
    small, other = generate_sized(16, seed=1), generate_sized(20, seed=1)
    background = (small.label == 0) & (other.label == 0)
    assert np.array_equal(small.image[background], other.image[background])  # only the objects change
    assert np.array_equal(generate_sized(30, seed=2).image, generate_sized(30, seed=2).image)
    with pytest.raises(DataError, match="positive"):
        generate_sized(0)
