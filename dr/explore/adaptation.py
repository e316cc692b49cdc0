"""Do routes adapt to object scale? The paper's premise (Fig. 1), measured.

Fig. 1 illustrates that an image of small objects should take a route that keeps high resolution
(its details live at 1/4 and 1/8) and an image of large objects one that can leave them early.
Per image we take

- its object size (the data set's ``size``: for the embedded data, the area-weighted mean object
  diameter in pixels), and
- its route's *fine share*: of the paths it opens, the share that leave a 1/4 or a 1/8 node,

and report Spearman's rank correlation rho between the two over a validation set, with a two-sided
permutation p-value (the fine shares shuffled over the images) and the number of images. The
premise predicts rho < 0: the smaller the objects, the finer the route.

A share can fall while the number of fine paths rises (small-object images keep more paths at
every scale), so the premise is also measured in absolute terms, per image: the open paths out of
each scale and the FLOPs executed in the nodes of each scale (:func:`dr.cost.real_cost_by_scale`).

- ``per_scale_rho``: Spearman of object size against the open paths out of 1/4, 1/8, 1/16, 1/32;
- ``rho_fine_flops`` / ``p_fine_flops``: against the FLOPs executed at 1/4 and 1/8;
- ``partial_rho_fine_flops`` / ``p_partial_fine_flops``, the deciding statistic: the same,
  controlling for the image's total executed FLOPs (a partial Spearman: the ranks of size and of
  fine FLOPs each freed of their linear dependence on the ranks of total FLOPs, then correlated).
  A network that only spends less on large objects lowers its fine FLOPs without routing any
  coarser; the premise predicts the partial rho negative.

``python -m dr adaptation --checkpoint C [--json]`` runs it on a trained network; the functions
take any per-image routes (a ``router`` gives hand-made ones, which is how the tests check that
the statistic finds a dependence that is there and none that is not).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import torch

from dr.cost import real_cost_by_scale
from dr.routes import Route
from dr.space import NUM_SCALES, Path
from dr.training.evaluate import forward_in_chunks

#: scale indices whose outgoing paths count as fine: 1/4 and 1/8
FINE_SCALES = (0, 1)


def fine_share(open_paths: Iterable[Path]) -> float:
    """Of the open paths, the share that leave a 1/4 or 1/8 node (NaN without open paths)."""
    paths = list(open_paths)
    return sum(p.scale in FINE_SCALES for p in paths) / len(paths) if paths else math.nan


def ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n, ties sharing their average rank."""
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    result = np.empty(len(values))
    start = 0
    for end in range(1, len(values) + 1):
        if end == len(values) or sorted_values[end] != sorted_values[start]:
            result[order[start:end]] = (start + end + 1) / 2  # the mean of ranks start+1 .. end
            start = end
    return result


def _centred_ranks(x: Sequence[float], y: Sequence[float]) -> tuple[np.ndarray, np.ndarray, float]:
    """The ranks of x and of y, each minus its mean, and the product of their norms."""
    rx, ry = ranks(np.asarray(x, float)), ranks(np.asarray(y, float))
    rx, ry = rx - rx.mean(), ry - ry.mean()
    return rx, ry, math.sqrt(float(rx @ rx) * float(ry @ ry))


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rho: Pearson's correlation of the ranks (NaN if either is constant)."""
    rx, ry, norm = _centred_ranks(x, y)
    return float(rx @ ry) / norm if norm > 0 else math.nan


def spearman_test(
    x: Sequence[float], y: Sequence[float], *, permutations: int = 10000, seed: int = 0
) -> tuple[float, float]:
    """rho and its two-sided permutation p-value: the share of shuffles of ``y`` whose |rho| is at
    least the observed one, counting the observed order (so p >= 1 / (permutations + 1))."""
    rho = spearman(x, y)
    if math.isnan(rho):
        return rho, 1.0
    rx, ry, norm = _centred_ranks(x, y)
    rng = np.random.default_rng(seed)
    hits = 0
    for start in range(0, permutations, 1000):  # 1000 shuffles at a time: (k, n) index matrices
        k = min(1000, permutations - start)
        shuffled = ry[rng.permuted(np.tile(np.arange(len(ry)), (k, 1)), axis=1)]
        hits += int((np.abs(shuffled @ rx) / norm >= abs(rho) - 1e-12).sum())
    return rho, (hits + 1) / (permutations + 1)


#: the control is removed as a cubic in its rank, and the permutation keeps each image in its decile
CONTROL_DEGREE = 3
CONTROL_STRATA = 10


def _residual_ranks(y: Sequence[float], z: Sequence[float]) -> np.ndarray:
    """The ranks of y less their least-squares fit on a cubic in the ranks of z: what the rank of
    y holds beyond any smooth dependence on z (a straight line would leave a curved one behind)."""
    ry, rz = ranks(np.asarray(y, float)), ranks(np.asarray(z, float))
    t = (rz - rz.mean()) / max(float(np.abs(rz - rz.mean()).max()), 1e-12)  # in [-1, 1]
    basis = np.stack([t**k for k in range(CONTROL_DEGREE + 1)], axis=1)
    coef, *_ = np.linalg.lstsq(basis, ry, rcond=None)
    return ry - basis @ coef


def partial_spearman_test(
    x: Sequence[float], y: Sequence[float], z: Sequence[float], *, permutations: int = 10000, seed: int = 0
) -> tuple[float, float]:
    """Spearman's rho of x and y controlling for z, and its two-sided permutation p-value: the
    ranks of x and of y each freed of a cubic in the ranks of z, then correlated; the residuals of
    y shuffled among the images of the same decile of z, so the shuffles keep what z explains.
    NaN and 1 where a residual is constant."""
    ex, ey = _residual_ranks(x, z), _residual_ranks(y, z)
    norm = math.sqrt(float(ex @ ex) * float(ey @ ey))
    if norm <= 1e-9 * len(ex):
        return math.nan, 1.0
    rho = float(ex @ ey) / norm
    rz = ranks(np.asarray(z, float))
    strata = np.minimum((CONTROL_STRATA * (rz - 1) / len(rz)).astype(int), CONTROL_STRATA - 1)
    rng = np.random.default_rng(seed)
    hits = 0
    for start in range(0, permutations, 1000):
        k = min(1000, permutations - start)
        order = np.tile(np.arange(len(ey)), (k, 1))
        for stratum in np.unique(strata):  # shuffle within each decile of z
            members = np.flatnonzero(strata == stratum)
            order[:, members] = members[rng.permuted(np.tile(np.arange(len(members)), (k, 1)), axis=1)]
        hits += int((np.abs(ey[order] @ ex) / norm >= abs(rho) - 1e-12).sum())
    return rho, (hits + 1) / (permutations + 1)


def paths_by_scale(open_paths: Iterable[Path]) -> list[int]:
    """How many of the open paths leave a node of each scale (1/4 .. 1/32)."""
    counts = [0] * NUM_SCALES
    for p in open_paths:
        counts[p.scale] += 1
    return counts


@torch.no_grad()
def route_records(
    model, dataset, *, batch: int = 16, router: Callable[[dict], Route] | None = None, progress: bool = False
) -> list[dict]:
    """Per image of ``dataset``: name, regime, object size, real GFLOPs and open paths, from the
    skipping inference of ``model``. ``router(sample)`` restricts each image to a route of its own."""
    if len(dataset) == 0:
        raise ValueError("the data set is empty: no image to measure")
    first = dataset[0]
    if "size" not in first:
        raise ValueError(
            "this data set records no object size per image ('size'); the adaptation "
            "statistic needs one: use the embedded data (--data synthetic or --data zoom)"
        )
    model.eval()
    records = []
    indices = range(0, len(dataset), batch)
    if progress:
        from tqdm.auto import tqdm

        indices = tqdm(indices, desc="routes", unit="batch", leave=False)
    for start in indices:
        samples = [dataset[i] for i in range(start, min(len(dataset), start + batch))]
        images = torch.stack([s["image"] for s in samples])
        route = [router(s) for s in samples] if router is not None else None
        out = forward_in_chunks(model, images, route=route, mode="skip")
        by_scale = real_cost_by_scale(out.costs, out.gates, out.active) / 1e9  # (B, 4) GFLOPs per scale
        for i, sample in enumerate(samples):
            records.append(
                {
                    "name": sample["name"],
                    "regime": sample["regime"],
                    "size": float(sample["size"]),
                    "gflops": float(out.total_real_cost[i]) / 1e9,
                    "gflops_by_scale": by_scale[i].tolist(),
                    "open": out.open_paths(i),
                }
            )
    return records


def adaptation(records: Sequence[dict], *, permutations: int = 10000, seed: int = 0) -> dict:
    """rho (object size against fine share), its permutation p-value and the number of images, with
    the mean size and fine share per regime and the number of distinct routes. ``records`` hold per
    image ``size``, ``regime``, ``gflops`` and ``open`` (its open paths), as :func:`route_records`
    returns them; an image with no open path at all has no fine share and is left out.

    ``not_computable`` says why rho is not a number (NaN, p-value 1) when it cannot be computed:
    fewer than 2 images with open paths, or a fine share or object size the same for every image
    (Network-Fix, gates that route every image alike); otherwise it is ``None``."""
    sizes = [r["size"] for r in records]
    shares = [fine_share(r["open"]) for r in records]
    kept = [i for i, f in enumerate(shares) if not math.isnan(f)]  # an image with no open path has no share
    rho, p = spearman_test([sizes[i] for i in kept], [shares[i] for i in kept], permutations=permutations, seed=seed)
    why = None
    if len(kept) < 2:
        why = f"it needs at least 2 images with open paths, and {len(kept)} of {len(records)} have any"
    elif len({shares[i] for i in kept}) == 1:
        why = f"every one of the {len(kept)} images takes a route with the same fine share ({shares[kept[0]]:.3f})"
    elif len({sizes[i] for i in kept}) == 1:
        why = f"every one of the {len(kept)} images has the same object size ({sizes[kept[0]]:.1f} px)"
    counts = [paths_by_scale(r["open"]) for r in records]
    per_scale_rho = [spearman(sizes, [c[s] for c in counts]) for s in range(NUM_SCALES)]
    absolute = {}
    if all("gflops_by_scale" in r for r in records):
        fine = [sum(r["gflops_by_scale"][s] for s in FINE_SCALES) for r in records]
        total = [sum(r["gflops_by_scale"]) for r in records]
        rho_fine, p_fine = spearman_test(sizes, fine, permutations=permutations, seed=seed)
        partial, p_partial = partial_spearman_test(sizes, fine, total, permutations=permutations, seed=seed)
        absolute = {
            "rho_fine_flops": rho_fine,
            "p_fine_flops": p_fine,
            "partial_rho_fine_flops": partial,
            "p_partial_fine_flops": p_partial,
        }
    regimes = sorted({r["regime"] for r in records if r.get("regime")})
    by_regime = {
        g: {
            "images": sum(r["regime"] == g for r in records),
            "size": float(np.mean([s for s, r in zip(sizes, records) if r["regime"] == g])),
            "fine_share": float(np.nanmean([f for f, r in zip(shares, records) if r["regime"] == g])),
            "open_paths_by_scale": np.mean([c for c, r in zip(counts, records) if r["regime"] == g], axis=0).tolist(),
        }
        for g in regimes
    }
    return {
        "rho": rho,
        "p_value": p,
        "not_computable": why,
        "n_images": len(kept),
        "per_scale_rho": per_scale_rho,  # size against the open paths out of 1/4, 1/8, 1/16, 1/32
        **absolute,
        "without_open_paths": len(records) - len(kept),
        "permutations": permutations,
        "distinct_routes": len({frozenset(r["open"]) for r in records}),
        "by_regime": by_regime,
        "per_image": [
            {"name": r["name"], "regime": r["regime"], "size": s, "fine_share": f, "gflops": r["gflops"]}
            for r, s, f in zip(records, sizes, shares)
        ],
    }


#: the zooms of the within-scene comparison (:func:`zoom_comparison`)
COMPARED_ZOOMS = (0.75, 1.5, 3.0)


@torch.no_grad()
def zoom_comparison(model, *, seed: int = 0, scenes: int = 96, zooms=COMPARED_ZOOMS) -> dict:
    """Does the same scene route coarser when zoomed in? Each of ``scenes`` validation scenes of the
    zoom data (:mod:`dr.data.zoom`) is rendered at every zoom of ``zooms`` and run through the
    skipping inference; per image its *fine fraction*, the FLOPs executed at 1/4 and 1/8 over all it
    executes (so a network that spends less overall does not count as routing coarser). Returns the
    mean fine fraction per zoom, and the paired difference highest zoom less lowest over the scenes,
    with its 95% t-interval: the premise predicts it negative (larger objects, coarser routes)."""
    from dr.data.base import MEAN, STD
    from dr.data.zoom import generate_zoomed
    from dr.study.statistics import interval

    mean, std = torch.tensor(MEAN).view(3, 1, 1), torch.tensor(STD).view(3, 1, 1)
    model.eval()
    fraction = np.zeros((scenes, len(zooms)))
    sizes = np.zeros((scenes, len(zooms)))
    for k, zoom in enumerate(zooms):
        samples = [generate_zoomed(seed, "val", i, zoom) for i in range(scenes)]
        images = torch.stack([(torch.from_numpy(s.image).permute(2, 0, 1) - mean) / std for s in samples])
        out = forward_in_chunks(model, images, mode="skip")
        by_scale = real_cost_by_scale(out.costs, out.gates, out.active)
        fraction[:, k] = (by_scale[:, list(FINE_SCALES)].sum(1) / by_scale.sum(1).clamp(min=1)).numpy()
        sizes[:, k] = [s.size for s in samples]
    paired = interval({str(i): float(fraction[i, -1] - fraction[i, 0]) for i in range(scenes)})
    return {
        "zooms": list(zooms),
        "scenes": scenes,
        "mean_size": sizes.mean(0).tolist(),
        "fine_fraction": fraction.mean(0).tolist(),
        "difference": None if paired is None else paired.mean,
        "interval": None if paired is None else [paired.low, paired.high],
    }
