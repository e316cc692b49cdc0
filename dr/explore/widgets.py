"""Interactive route explorers (ipywidgets) over the plain functions of :mod:`dr.explore` and
:mod:`dr.explore.visualise`.

The widgets only wire controls to rendering functions that return figures; every control's
``value`` can be set from code (the tests do), and :attr:`figure` / :attr:`last` / :attr:`numbers`
hold what was drawn last. Every change renders once: the image number is a text field that
commits on Enter or when it loses focus (``continuous_update=False``), not a slider that renders
while it is dragged.

- :class:`RouteExplorer`: choose a model, an image regime and an image (by its number, or with
  "previous" / "next"); see image, ground truth, prediction and the route that image took
  (Fig. 1), with its real and expected cost.
- :class:`CommonNetworkExplorer`: choose a model and a threshold; see its common network (Fig. 4).
- :class:`ScaleExplorer`: choose a model, an object diameter (a slider, 12 to 384 pixels) and a seed;
  see the route an image of objects of that size takes (Fig. 1 as the objects grow), which scales
  it uses (its fine-scale share) and what it costs.

Each takes ``runs`` as a mapping from the name a reader should see (``"Dynamic-A"``) to a
:class:`~dr.explore.runs.Run`; that name is the one in the dropdown and in the figure's title.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import ipywidgets as widgets
from matplotlib.figure import Figure

from dr.cost import CostModel
from dr.explore.adaptation import fine_share
from dr.explore.analysis import ImageRoute, route_of, sized_sample
from dr.explore.runs import Run
from dr.explore.visualise import draw_route, figure, node_kinds, plot_image_route, route_legend


def _show(output: widgets.Output, fig: Figure) -> None:
    """Replace the output's content with ``fig`` (inside a kernel; a no-op elsewhere)."""
    try:
        from IPython import get_ipython
        from IPython.display import display
    except ImportError:  # pragma: no cover - ipywidgets depends on IPython
        return
    if get_ipython() is None:
        return
    with output:
        output.clear_output(wait=True)
        display(fig)


class RouteExplorer:
    """Image by image: which route does each trained model take?

    The image number counts from 0 among the images of the chosen regime (under ``all`` it is
    the data set index); "previous" and "next" wrap around at the ends. Choosing another regime
    goes back to its first image.
    """

    def __init__(self, runs: Mapping[str, Run], dataset, *, regimes=("all", "small", "large", "mixed")):
        if not runs:
            raise ValueError("RouteExplorer needs at least one run (name -> dr.explore.Run)")
        self.runs = dict(runs)
        self.dataset = dataset
        self.model = widgets.Dropdown(options=list(self.runs), description="model")
        self.regime = widgets.Dropdown(options=list(regimes), description="images")
        self.image = widgets.BoundedIntText(value=0, min=0, max=0, description="image", continuous_update=False)
        self.count = widgets.Label()
        self.previous = widgets.Button(description="previous", tooltip="the previous image of this regime")
        self.next = widgets.Button(description="next", tooltip="the next image of this regime")
        self.output = widgets.Output()
        self.info = widgets.HTML()
        self.last: ImageRoute | None = None
        self.figure: Figure | None = None
        self._hold = False  # True while a regime change moves the image number: render once, after
        self._update_indices()
        self.model.observe(lambda _: self.render(), names="value")
        self.regime.observe(self._on_regime, names="value")
        self.image.observe(self._on_image, names="value")
        self.previous.on_click(lambda _: self.step(-1))
        self.next.on_click(lambda _: self.step(+1))
        controls = widgets.HBox([self.model, self.regime])
        browse = widgets.HBox([self.image, self.count, self.previous, self.next])
        self.widget = widgets.VBox([controls, browse, self.info, self.output])
        self.widget.add_class("dr-route-explorer")  # a handle for the browser test
        self.render()

    def _update_indices(self) -> None:
        regime = self.regime.value
        regime_of = getattr(self.dataset, "regime", None)
        self.indices = [
            i for i in range(len(self.dataset)) if regime == "all" or regime_of is None or regime_of(i) == regime
        ]
        if not self.indices:
            raise ValueError(f"no image of regime {regime!r} in the data set")
        self.image.max = len(self.indices) - 1
        self.count.value = f"of 0-{self.image.max}"

    def _on_regime(self, _change) -> None:
        self._hold = True
        try:
            self.image.value = 0  # first, so that lowering the maximum never clamps (and renders) an old number
            self._update_indices()
        finally:
            self._hold = False
        self.render()

    def _on_image(self, _change) -> None:
        if not self._hold:
            self.render()

    def step(self, by: int) -> None:
        """Move ``by`` images within the regime, wrapping around at the ends (the buttons call it)."""
        self.image.value = (self.image.value + by) % len(self.indices)

    def render(self) -> Figure:
        """Draw the current image under the current model; returns the figure."""
        name = self.model.value
        run = self.runs[name]
        index = self.indices[self.image.value]
        self.last = route_of(run.model, self.dataset[index], route=run.route)
        common = run.common() if run.routes and run.route is None else None  # paths open in > 95% of images
        self.figure = plot_image_route(
            self.last.image,
            self.last.label,
            self.last.prediction,
            run.space,
            self.last.weights,
            self.last.running,
            title=f"{name}: {self.last.name} ({self.last.regime} objects)",
            cost_text=self.last.cost_text(),
            reference=common,
            reference_name=f"{name}'s common route",
        )
        kinds = node_kinds(run.space, self.last.open_paths, self.last.running)
        self.info.value = (
            f"{name}, {self.last.name} (data set index {index}): "
            f"<b>{len(self.last.open_paths)}</b> of {len(run.space.paths)} paths open, "
            f"<b>{len(kinds['computed'])}</b> of {len(run.space.nodes)} cells computed, "
            f"{len(kinds['bypassed'])} bypassed; {self.last.cost_text()}"
        )
        _show(self.output, self.figure)
        return self.figure

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)


def common_network_figure(run: Run, threshold: float, *, name: str | None = None) -> tuple[Figure, dict]:
    """Fig. 4: the paths ``run`` opens in more than ``threshold`` of its evaluation images,
    drawn by how often each is open; returns the figure and the common network's numbers.
    ``name`` is the model's name in the title (default: the run's folder name)."""
    if not run.routes:
        raise ValueError(f"{run.folder} has no routes.json: evaluate it first ('python -m dr eval --checkpoint ...')")
    share = {p: sum(p in r for r in run.routes) / len(run.routes) for p in run.space.paths}
    common = run.common(threshold)
    height, width = run.records[0]["height"], run.records[0]["width"]
    costs = CostModel(run.model.config.replace(activation="fix"), height, width)
    numbers = {
        "paths": len(common.paths),
        "gflops": costs.route_cost(common.paths, gated=False).flops / 1e9,
        "gflops_dynamic_avg": run.metrics.get("gflops_avg"),
    }
    fig = figure(8.0, 3.6)
    ax = fig.add_subplot()
    draw_route(
        ax,
        run.space,
        {p: share[p] if p in common.paths else 0.0 for p in run.space.paths},
        title=f"common network of {name or run.name}: paths open in > {threshold:.0%} of images "
        f"({numbers['paths']} paths, {numbers['gflops']:.4f} GFLOPs)",
    )
    route_legend(ax, width="share of images that open it")
    return fig, numbers


class CommonNetworkExplorer:
    """The common network of each run as the threshold moves."""

    def __init__(self, runs: Mapping[str, Run], *, threshold: float = 0.95):
        self.runs = {name: run for name, run in runs.items() if run.routes}
        if not self.runs:
            raise ValueError("CommonNetworkExplorer needs runs with per-image routes (routes.json)")
        self.model = widgets.Dropdown(options=list(self.runs), description="model")
        self.threshold = widgets.FloatSlider(
            value=threshold, min=0.05, max=0.99, step=0.01, description="threshold", continuous_update=False
        )
        self.output = widgets.Output()
        self.info = widgets.HTML()
        self.figure: Figure | None = None
        self.numbers: dict = {}
        self.model.observe(lambda _: self.render(), names="value")
        self.threshold.observe(lambda _: self.render(), names="value")
        self.widget = widgets.VBox([widgets.HBox([self.model, self.threshold]), self.info, self.output])
        self.widget.add_class("dr-common-network-explorer")  # a handle for the browser test
        self.render()

    def render(self) -> Figure:
        name = self.model.value
        self.figure, self.numbers = common_network_figure(self.runs[name], self.threshold.value, name=name)
        dynamic = self.numbers["gflops_dynamic_avg"]
        self.info.value = (
            f"{name}, threshold {self.threshold.value:.2f}: <b>{self.numbers['paths']}</b> of "
            f"{len(self.runs[name].space.paths)} paths, {self.numbers['gflops']:.4f} GFLOPs as a static network"
            + (f" (the dynamic one: {dynamic:.4f} on average)" if dynamic is not None else "")
        )
        _show(self.output, self.figure)
        return self.figure

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)


#: the scale explorer's object diameters, pixels: from objects a few 1/4-scale pixels wide to objects three
#: times the 128-pixel image (one huge object whose border crosses it)
DIAMETERS = (12, 384)


def _percent(share: float) -> str:
    return "none" if math.isnan(share) else f"{share:.0%}"


def scale_figure(run: Run, diameter: float, seed: int = 0, name: str | None = None) -> tuple[Figure, dict]:
    """Fig. 1, one object size at a time: the embedded data's image whose objects all have about
    ``diameter`` pixels (:func:`~dr.explore.analysis.sized_sample`; its background depends on
    ``seed`` only), the ground truth, ``run``'s prediction and the route the image takes, its paths
    that differ from ``run``'s common route in red. ``name`` is the model's name in the title
    (default: the run's folder name). Returns the figure and its numbers:

    - ``diameter`` (asked for), ``seed``, ``size`` (measured: the area-weighted object diameter);
    - ``paths``: open paths; ``fine_share``: the share of them that leave a 1/4 or 1/8 node
      (:func:`~dr.explore.adaptation.fine_share`; NaN without open paths);
    - ``gflops`` (real, what ran) and ``expected_gflops`` (Eq. 8), stem and decoder included;
    - ``computed`` / ``bypassed``: nodes that computed their cell / that ran but were bypassed
      (:func:`~dr.explore.visualise.node_kinds`).
    """
    name = name or run.name
    sample = sized_sample(diameter, seed)
    info = route_of(run.model, sample, route=run.route)
    kinds = node_kinds(run.space, info.open_paths, info.running)
    numbers = {
        "diameter": float(diameter),
        "seed": int(seed),
        "size": float(sample["size"]),
        "paths": len(info.open_paths),
        "fine_share": fine_share(info.open_paths),
        "gflops": info.real_gflops,
        "expected_gflops": info.expected_gflops,
        "computed": len(kinds["computed"]),
        "bypassed": len(kinds["bypassed"]),
    }
    common = run.common() if run.routes and run.route is None else None  # paths open in > 95% of images
    fig = plot_image_route(
        info.image,
        info.label,
        info.prediction,
        run.space,
        info.weights,
        info.running,
        title=f"{name}: objects of about {diameter:.0f} px (measured {numbers['size']:.0f} px), seed {seed}",
        cost_text=f"fine-scale share {_percent(numbers['fine_share'])}; {info.cost_text()}",
        reference=common,
        reference_name=f"{name}'s common route",
    )
    return fig, numbers


class ScaleExplorer:
    """As the objects grow, which scales does the route use? (Fig. 1)

    The diameter slider moves in four steps per doubling (a log scale) and draws once when it is
    released; its value is rounded to whole pixels. One seed keeps the same background and places
    objects of every size afresh.
    """

    def __init__(self, runs: Mapping[str, Run], *, diameter: float = 24, seed: int = 0):
        if not runs:
            raise ValueError("ScaleExplorer needs at least one run (name -> dr.explore.Run)")
        self.runs = dict(runs)
        low, high = DIAMETERS
        self.model = widgets.Dropdown(options=list(self.runs), description="model")
        self.diameter = widgets.FloatLogSlider(
            value=diameter,
            base=2,
            min=math.log2(low),
            max=math.log2(high),
            step=0.25,
            description="diameter",
            tooltip="object diameter in pixels (the image is 128 x 128)",
            readout_format=".0f",
            continuous_update=False,
            layout=widgets.Layout(width="420px"),
        )
        self.seed = widgets.BoundedIntText(
            value=seed, min=0, max=2**31 - 1, description="seed", continuous_update=False, layout={"width": "180px"}
        )
        self.output = widgets.Output()
        self.info = widgets.HTML()
        self.figure: Figure | None = None
        self.numbers: dict = {}
        for control in (self.model, self.diameter, self.seed):
            control.observe(lambda _: self.render(), names="value")
        self.widget = widgets.VBox([widgets.HBox([self.model, self.diameter, self.seed]), self.info, self.output])
        self.widget.add_class("dr-scale-explorer")  # a handle for the browser test
        self.render()

    def render(self) -> Figure:
        """Draw the current model at the current diameter (whole pixels) and seed; returns the figure."""
        name, diameter, seed = self.model.value, round(self.diameter.value), self.seed.value
        run = self.runs[name]
        self.figure, self.numbers = scale_figure(run, diameter, seed, name)
        n = self.numbers
        self.info.value = (
            f"{name}, objects of {diameter} px (measured {n['size']:.1f} px), seed {seed}: "
            f"<b>{n['paths']}</b> of {len(run.space.paths)} paths open, fine-scale share "
            f"<b>{_percent(n['fine_share'])}</b> (out of 1/4 or 1/8); "
            f"<b>{n['computed']}</b> of {len(run.space.nodes)} cells computed, {n['bypassed']} bypassed; "
            f"real {n['gflops']:.4f} GFLOPs, expected {n['expected_gflops']:.4f}"
        )
        _show(self.output, self.figure)
        return self.figure

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)
