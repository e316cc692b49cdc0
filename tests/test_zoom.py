"""Fig. 1's zoom data (dr/data/zoom.py): sizes spread continuously, the count drawn apart from the
size, the same scene at several zooms, scale augmentation in training, and the whole pipeline."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import SMALL_RUN

from dr.cli import main
from dr.data import build_dataset, data_design
from dr.data.zoom import BINS, MAX_COUNT, draw_scene, generate_zoomed
from dr.explore.adaptation import spearman


@pytest.fixture(scope="module")
def samples():
    return [generate_zoomed(0, "val", i) for i in range(300)]


def test_sizes_spread_continuously_from_below_16_px_to_beyond_the_image(samples):
    sizes = np.array([s.size for s in samples])
    assert np.percentile(sizes, 5) < 17 and np.percentile(sizes, 95) > 128
    assert np.histogram(np.log(sizes), bins=8)[0].min() >= 5  # no gap: every bin of log size is populated
    for s in samples:
        low, high = BINS[s.regime]
        assert low <= s.size < high
    again = generate_zoomed(0, "val", 17)
    assert np.array_equal(again.image, samples[17].image) and again.size == samples[17].size  # deterministic


def test_the_count_is_drawn_apart_from_the_size_and_recorded(samples):
    drawn = [len(draw_scene(0, "val", i).objects) for i in range(300)]
    scene_size = [draw_scene(0, "val", i).objects[0][3] * draw_scene(0, "val", i).zoom for i in range(300)]
    assert abs(spearman(scene_size, drawn)) < 0.15  # the draw ignores the size
    assert set(drawn) == set(range(1, MAX_COUNT + 1))
    for regime in BINS:  # count-matched comparisons: single-object images in every size bin
        assert any(s.count == 1 for s in samples if s.regime == regime), regime
    assert all(1 <= s.count <= MAX_COUNT for s in samples)


def test_one_scene_at_several_zooms_scales_its_objects():
    sizes = {z: generate_zoomed(0, "val", 5, z) for z in (0.6, 1.0, 1.6)}
    assert sizes[1.0].size / sizes[0.6].size == pytest.approx(1.0 / 0.6, rel=0.05)
    assert sizes[1.6].size / sizes[1.0].size == pytest.approx(1.6, rel=0.05)
    classes = {z: set(np.unique(s.label)) for z, s in sizes.items()}
    assert classes[0.6] == classes[1.0] == classes[1.6]  # the same objects, larger
    labelled = {z: int((s.label > 0).sum()) for z, s in sizes.items()}
    assert labelled[0.6] < labelled[1.0] < labelled[1.6]


def test_training_draws_a_zoom_of_its_own_and_the_pipeline_runs(tmp_path):
    import torch

    train = build_dataset("zoom", "train", train=True, seed=0, size=8)
    torch.manual_seed(0)
    zooms = {round(train[3]["zoom"], 6) for _ in range(5)}
    assert len(zooms) > 1  # scale augmentation: another zoom per draw
    assert data_design("zoom").startswith("zoom-v1-") and data_design("zoom") != data_design("synthetic")
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), *SMALL_RUN, "--data", "zoom", "--crop", "128"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["miou_by_regime"]) <= set(BINS) and metrics["provenance"]["data"] == data_design("zoom")
    assert main(["train", "--out", str(tmp_path / "x"), *SMALL_RUN, "--data", "zoom", "--data-root", "/tmp"]) == 2


def test_the_within_scene_comparison_pairs_each_scene_across_zooms():
    """Network-Fix runs every path whatever the image: its fine fraction is the same at every zoom,
    so the paired difference is 0; the scenes' object sizes grow with the zoom."""
    import torch
    from conftest import small_config

    from dr.explore.adaptation import zoom_comparison
    from dr.model import DynamicRoutingNet

    torch.manual_seed(0)
    model = DynamicRoutingNet(small_config(activation="fix", num_classes=4))
    result = zoom_comparison(model, scenes=6, zooms=(0.75, 1.5, 3.0))
    assert result["difference"] == pytest.approx(0.0, abs=1e-6)
    assert result["interval"] == pytest.approx([0.0, 0.0], abs=1e-6)
    assert len(set(round(f, 6) for f in result["fine_fraction"])) == 1
    assert result["mean_size"][0] < result["mean_size"][1] < result["mean_size"][2]
