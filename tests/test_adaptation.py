"""The adaptation statistic (Fig. 1's premise): Spearman's rho of object size against the route's
fine share, with a permutation p-value. It must find a dependence that is there and none that is not."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import small_config

from dr.explore.adaptation import adaptation, fine_share, ranks, route_records, spearman, spearman_test
from dr.model import DynamicRoutingNet
from dr.routes import named_route
from dr.space import Path, RoutingSpace


def test_ranks_share_ties_and_spearman_is_the_textbook_formula():
    assert ranks(np.array([10.0, 30.0, 20.0, 20.0])).tolist() == [1.0, 4.0, 2.5, 2.5]
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=50), rng.normal(size=50)
    d = ranks(x) - ranks(y)
    assert spearman(x, y) == pytest.approx(1 - 6 * float(d @ d) / (50 * (50**2 - 1)))  # no ties
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(spearman([1, 2, 3], [5, 5, 5]))


def test_fine_share_counts_paths_out_of_1_4_and_1_8():
    paths = [Path(0, 0, "keep"), Path(1, 1, "down"), Path(2, 2, "keep"), Path(3, 3, "up")]
    assert fine_share(paths) == 0.5
    assert math.isnan(fine_share([]))


def test_the_permutation_test_finds_a_dependence_and_only_a_real_one():
    rng = np.random.default_rng(1)
    size = rng.uniform(10, 150, 200)
    dependent = 0.9 - size / 300 + rng.normal(0, 0.1, 200)  # finer routes for smaller objects
    independent = rng.uniform(0.3, 0.9, 200)
    rho, p = spearman_test(size, dependent, permutations=2000)
    assert rho < -0.5 and p < 0.01
    rho, p = spearman_test(size, independent, permutations=2000)
    assert abs(rho) < 0.2 and p > 0.05
    assert spearman_test(size, np.full(200, 0.5)) == (pytest.approx(math.nan, nan_ok=True), 1.0)
    assert spearman_test(size[:30], dependent[:30], permutations=99)[1] >= 1 / 100


class SizedImages(torch.utils.data.Dataset):
    """Random images, each with an object size; half of them 'small', half 'large'."""

    def __init__(self, n: int = 48, sizes=None):
        generator = torch.Generator().manual_seed(0)
        self.images = torch.randn(n, 3, 64, 64, generator=generator)
        self.sizes = sizes or torch.linspace(8, 120, n)[torch.randperm(n, generator=generator)].tolist()

    def __len__(self):
        return len(self.sizes)

    def __getitem__(self, i):
        return {
            "image": self.images[i],
            "name": f"img{i}",
            "size": self.sizes[i],
            "regime": "small" if self.sizes[i] < 64 else "large",
        }


@pytest.fixture(scope="module")
def network():
    torch.manual_seed(0)
    return DynamicRoutingNet(small_config(depth=4, gate_init="small")).eval()  # every gate open: routes decide


def test_a_network_routed_by_size_by_hand_adapts(network):
    fine, coarse = named_route("hrnetv2", network.space), named_route("fcn32s", network.space)
    assert fine_share(fine.paths) > fine_share(coarse.paths)
    records = route_records(network, SizedImages(), batch=16, router=lambda s: fine if s["size"] < 64 else coarse)
    result = adaptation(records, permutations=2000)
    assert result["n_images"] == 48 and result["distinct_routes"] == 2
    assert result["rho"] < -0.8 and result["p_value"] < 0.01
    assert result["by_regime"]["small"]["fine_share"] > result["by_regime"]["large"]["fine_share"]


def test_a_network_routed_regardless_of_size_does_not(network):
    """Four routes, and each of twelve object sizes taken by four images, one on each route."""
    routes = [named_route(n, network.space) for n in ("hrnetv2", "fcn32s", "unet", "deeplabv3")]
    images = SizedImages(48, sizes=[8.0 + 10 * (i // 4) for i in range(48)])
    records = route_records(network, images, batch=16, router=lambda s: routes[int(s["name"][3:]) % 4])
    result = adaptation(records, permutations=2000)
    assert result["distinct_routes"] == 4
    assert abs(result["rho"]) < 1e-9 and result["p_value"] > 0.5


def test_a_data_set_without_object_sizes_is_a_clear_error(network):
    class NoSize(SizedImages):
        def __getitem__(self, i):
            sample = super().__getitem__(i)
            del sample["size"]
            return sample

    with pytest.raises(ValueError, match="records no object size"):
        route_records(network, NoSize(4))


def test_fixed_alpha_ablation_changes_nothing_when_alphas_do_not_depend_on_the_image():
    """Gates whose last convolution is zero give every image the same alphas (their bias):
    replacing them by their mean gives the same predictions (up to the mean's rounding, which can
    flip a pixel or two of an untrained network whose logits nearly tie)."""
    from dr.config import preset
    from dr.data.synthetic import SyntheticShapes
    from dr.explore.analysis import fixed_alpha_ablation
    from dr.model import DynamicRoutingNet

    torch.manual_seed(0)
    model = DynamicRoutingNet(preset("tiny"))
    with torch.no_grad():
        for node in model.nodes.values():
            if node.gate is not None:
                node.gate.logit.weight.zero_()
                node.gate.logit.bias.uniform_(-0.5, 2.0)  # some paths closed, the others at various alphas
    result = fixed_alpha_ablation(model, SyntheticShapes("val", seed=0, size=12), batch=6)
    assert result["per_image"] == pytest.approx(result["mean_alpha"], abs=1e-5)
    assert set(result["per_image"]) == {"all", "small", "large", "mixed"}


def test_the_shipped_dynamic_raw_needs_its_per_image_alphas_on_large_objects():
    """The measured finding behind the study's gap between gated and static networks: with one
    mean alpha per path, Dynamic-Raw keeps its small-object accuracy but loses most of its
    large-object accuracy (the gates' image-wide pooling carries the large objects' class)."""
    from pathlib import Path as FilePath

    from dr.data.synthetic import SyntheticShapes
    from dr.explore.analysis import fixed_alpha_ablation
    from dr.explore.runs import load_run

    run = load_run(FilePath(__file__).resolve().parent.parent / "checkpoints" / "tiny-raw")
    result = fixed_alpha_ablation(run.model, SyntheticShapes("val", seed=0, size=48))
    own, fixed = result["per_image"], result["mean_alpha"]
    assert own["large"] - fixed["large"] > 0.3  # measured on 240 images: 98.4 against 44.3
    assert abs(own["small"] - fixed["small"]) < 0.1  # 85.6 against 85.3


def test_partial_spearman_removes_what_the_control_explains():
    """x and y both follow z: strongly rank-correlated, but not once z is controlled for, even
    where they follow it along a curve; a y that follows x beyond z keeps its partial correlation."""
    from dr.explore.adaptation import partial_spearman_test, spearman

    rng = np.random.default_rng(0)
    z = rng.normal(size=300)
    x = z + 0.3 * rng.normal(size=300)
    y = z + 0.3 * rng.normal(size=300)
    assert spearman(x, y) > 0.8
    rho, p = partial_spearman_test(x, y, z, permutations=2000)
    assert abs(rho) < 0.15 and p > 0.01
    y_on_x = z - 2.0 * (x - z) + 0.1 * rng.normal(size=300)
    rho, p = partial_spearman_test(x, y_on_x, z, permutations=2000)
    assert rho < -0.8 and p == pytest.approx(1 / 2001)
    assert math.isnan(partial_spearman_test(x, z, z, permutations=10)[0])  # y fully explained: no residual
    skewed = rng.exponential(size=2000)  # a curved dependence on a skewed control (a line would leave it)
    curved_x = skewed**2 + 0.5 * rng.normal(size=2000)
    curved_y = skewed**2 + 0.5 * rng.normal(size=2000)
    rho, p = partial_spearman_test(curved_x, curved_y, skewed, permutations=2000)
    assert abs(rho) < 0.05 and p > 0.01


def test_adaptation_measures_fine_paths_and_flops_in_absolute_terms():
    """Small objects open more paths at every scale: a higher count and a lower share. When their
    fine FLOPs are a fixed fraction of what they spend, the share's rho and the absolute rhos
    disagree and the partial rho given the total is near 0; when large objects spend a smaller
    fraction on fine scales, the partial rho is negative."""
    from dr.explore.adaptation import adaptation

    space = RoutingSpace(4)
    by_scale = {s: [p for p in space.paths if p.scale == s] for s in range(4)}

    def records(fine_fraction) -> list[dict]:
        rng = np.random.default_rng(1)
        result = []
        for i in range(120):
            small = i % 2 == 0
            keep = {0: 6, 1: 6, 2: 6 if small else 2, 3: 3 if small else 1}  # large objects close coarse paths
            total = (5.0 if small else 3.0) + rng.normal(0, 0.3)
            size = (20.0 if small else 300.0) + i
            fine = fine_fraction(size) * total + rng.normal(0, 0.05)
            result.append(
                {
                    "name": str(i),
                    "regime": "small" if small else "large",
                    "size": size,
                    "gflops": total,
                    "gflops_by_scale": [fine / 2, fine / 2, total - fine, 0.0],
                    "open": frozenset(p for s, n in keep.items() for p in by_scale[s][:n]),
                }
            )
        return result

    null = adaptation(records(lambda size: 0.5), permutations=500)
    assert null["rho"] > 0.8  # the share rises with size ...
    assert null["per_scale_rho"][2] < -0.8 and null["per_scale_rho"][3] < -0.8  # ... as coarse paths close
    assert null["rho_fine_flops"] < -0.5  # fine FLOPs fall with size, only because the total does
    assert abs(null["partial_rho_fine_flops"]) < 0.2 and null["p_partial_fine_flops"] > 0.01
    assert null["by_regime"]["small"]["open_paths_by_scale"] == [6, 6, 6, 3]
    coarser = adaptation(records(lambda size: 0.6 - 0.001 * size), permutations=500)
    assert coarser["partial_rho_fine_flops"] < -0.3 and coarser["p_partial_fine_flops"] < 0.01


def test_real_cost_by_scale_adds_up_to_the_real_cost(images):
    from conftest import diversify_gates, small_config

    from dr.cost import real_cost_by_scale
    from dr.model import DynamicRoutingNet

    torch.manual_seed(0)
    model = DynamicRoutingNet(small_config())
    diversify_gates(model, images, 0)
    model.eval()
    with torch.no_grad():
        out = model(images)
    by_scale = real_cost_by_scale(out.costs, out.gates, out.active)
    assert by_scale.shape == (len(images), 4)
    torch.testing.assert_close(by_scale.sum(dim=1), out.real_cost)
    costs = model.cost_model(*images.shape[-2:])
    top = 0.0  # the nodes of scale 1/4 for image 0, written out
    for n in (n for n in model.space.nodes if n.scale == 0 and bool(out.active[n][0])):
        opened = [j for j in range(len(model.space.paths_out(n))) if float(out.gates[n][0, j]) > 0]
        top += costs.gate_cost[n].flops + (costs.cell_cost[n].flops if opened else 0.0)
        top += sum(costs.path_cost[model.space.paths_out(n)[j]].flops for j in opened)
    assert float(by_scale[0, 0]) == pytest.approx(top, rel=1e-6)
