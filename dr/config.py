"""Typed model configuration and the named presets (paper Sec. 3.4 and Sec. 4.4).

A :class:`ModelConfig` says everything that shapes the network: the width ``C`` of the 1/4 scale,
the depth ``L`` of the routing space, the number of classes, the cell operation and the gate.
Presets give the paper's Layer16 / Layer33 and a ``tiny`` network that trains on a laptop CPU.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

#: Gate activations delta(.) of Eq. 3 and Table 3. ``fix`` means no gate at all (Network-Fix).
#: ``constant``: alpha = max(0, tanh(beta)) with one learned beta per path, the same for every image
#: (Eq. 2 without G(X)): learned path weights, no image context (the study's decomposition).
ACTIVATIONS = ("tanh", "sigmoid", "softmax", "gumbel", "constant", "fix")
#: The activations of a real gate (every one but ``fix``).
GATED_ACTIVATIONS = tuple(a for a in ACTIVATIONS if a != "fix")
#: Initialisations of the gate's last convolution F(w2, .): He-normal (the paper, the authors' code)
#: or N(0, 0.01) (every path starts open whatever the image); see dr.gate.SoftConditionalGate.
GATE_INITS = ("he", "small")
#: Number of stacked SepConv3x3 in a cell (Table 2: x1, x2 (the paper's choice), x3).
SEPCONV_REPEATS = (1, 2, 3)
#: The smallest input side: the network down-samples by 32.
MIN_INPUT_SIDE = 32


#: What a network computed before model semantics 2 (the stem padded by 1, the bypass only at an
#: alpha sum of exactly 0): a saved config without these fields loads with them, so an old
#: checkpoint computes what it was trained to compute.
SEMANTICS_1 = {"stem_padding": 1, "bypass_below": 0.0}


class ConfigError(ValueError):
    """A configuration value is not allowed; the message names the value and the choices."""


@dataclass(frozen=True)
class ModelConfig:
    """Everything that shapes a dynamic routing network.

    - ``width``: channels C at scale 1/4; scale 1/2^(k+2) has C * 2^k channels (paper: 64).
    - ``depth``: number of routing layers L after the initial node (paper: 16 or 33).
    - ``num_classes``: output classes of the decoder (Cityscapes: 19).
    - ``sepconv_repeats``: SepConv3x3 stacked in each cell, 1, 2 (paper) or 3 (Table 2).
    - ``activation``: gate activation delta: ``tanh`` = max(0, tanh) (Eq. 3), ``sigmoid``,
      ``softmax`` (over a node's paths), ``gumbel`` (binary straight-through Gumbel-sigmoid
      gates, from pixel-wise attentional gating), ``constant`` (alpha = max(0, tanh(beta)), one
      learned beta per path whatever the image: :class:`dr.gate.ConstantGate`) or ``fix`` (no gate,
      every alpha is 1: Network-Fix).
    - ``small_gate``: down-sample the gate input by 4 per side (the paper does so under a budget).
    - ``gate_bias``: initial bias beta of the gate's last convolution (Eq. 2); tanh(1.5) = 0.905.
    - ``gate_init``: initialisation of that convolution's weights, ``he`` or ``small`` (N(0, 0.01)).
    - ``stem_width``: channels of the fixed stem (paper: 64, equal to ``width``).
    - ``stem_padding``: padding of the stem's first conv3x3 stride 2: 0 as in the authors' code
      (their weights expect it), 1 in checkpoints of model semantics 1 (see :data:`SEMANTICS_1`).
    - ``bypass_below``: an image whose alphas at a node sum below this is closed there: every alpha
      set to 0, the cell bypassed (X passed on along keep). 1e-4 as in the authors' code; 0 (only
      alphas that are all 0) in checkpoints of model semantics 1.
    """

    width: int = 64  # C, channels at 1/4 scale
    depth: int = 16  # L, routing layers after the initial node
    num_classes: int = 19  # decoder output classes
    sepconv_repeats: int = 2  # SepConv3x3 x1 / x2 / x3 inside a cell
    activation: str = "tanh"  # gate activation delta, see ACTIVATIONS
    small_gate: bool = False  # gate input bilinearly down-sampled x4 (used with a budget)
    gate_bias: float = 1.5  # beta init of Eq. 2
    gate_init: str = "he"  # F(w2) init: he (the paper) | small (N(0, 0.01)), see GATE_INITS
    stem_width: int | None = None  # None: same as width
    stem_padding: int = 0  # the stem's first conv3x3 s2: 0 (authors' code) or 1 (model semantics 1)
    bypass_below: float = 1e-4  # a node whose alphas sum below this is closed for the image (authors' code)

    def __post_init__(self) -> None:
        validate(self)

    @property
    def stem_channels(self) -> int:
        return self.width if self.stem_width is None else self.stem_width

    @property
    def gated(self) -> bool:
        """True when nodes carry a soft conditional gate (every activation but ``fix``)."""
        return self.activation != "fix"

    def replace(self, **changes) -> ModelConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown model config field(s) {unknown}; allowed: {sorted(known)}")
        # a config saved before gate_init existed was initialised the old way, N(0, 0.01); one saved
        # before stem_padding / bypass_below existed computes the network of model semantics 1
        return cls(**({"gate_init": "small"} | SEMANTICS_1 | values))

    @property
    def semantics(self) -> int:
        """The model semantics this config computes: 2 (the authors' stem and bypass), 1 (before)."""
        return 1 if (self.stem_padding, self.bypass_below) == tuple(SEMANTICS_1.values()) else 2


def check_choice(what: str, value, choices, option: str | None = None) -> None:
    """Raise :class:`ConfigError` if ``value`` is not one of ``choices``, naming it, the command-line
    ``option`` it came from (if any) and the choices."""
    if value not in choices:
        where = f" ({option})" if option else ""
        raise ConfigError(f"unknown {what} {value!r}{where}; choose one of {', '.join(map(str, choices))}")


def check_activation(activation: str, *, gated: bool = False) -> None:
    """Raise :class:`ConfigError` for an unknown gate activation (``gated``: ``fix`` is not a gate)."""
    check_choice("gate activation", activation, GATED_ACTIVATIONS if gated else ACTIVATIONS)


def validate(config: ModelConfig) -> None:
    """Raise :class:`ConfigError` naming the bad value and the allowed choices."""
    if not isinstance(config.depth, int) or config.depth < 1:
        raise ConfigError(f"depth L must be an integer >= 1, got {config.depth!r}")
    if not isinstance(config.width, int) or config.width < 2 or config.width % 2:
        raise ConfigError(f"width C must be an even integer >= 2, got {config.width!r}")
    if config.stem_width is not None and (not isinstance(config.stem_width, int) or config.stem_width < 1):
        raise ConfigError(f"stem_width must be a positive integer or None, got {config.stem_width!r}")
    if not isinstance(config.num_classes, int) or config.num_classes < 1:
        raise ConfigError(f"num_classes must be an integer >= 1, got {config.num_classes!r}")
    check_activation(config.activation)
    check_choice("gate init", config.gate_init, GATE_INITS)
    if config.stem_padding not in (0, 1):
        raise ConfigError(f"stem_padding must be 0 or 1, got {config.stem_padding!r}")
    if not isinstance(config.bypass_below, (int, float)) or not 0 <= config.bypass_below < 1:
        raise ConfigError(f"bypass_below must be a number in [0, 1), got {config.bypass_below!r}")
    if config.sepconv_repeats not in SEPCONV_REPEATS:
        raise ConfigError(f"sepconv_repeats must be one of {SEPCONV_REPEATS}, got {config.sepconv_repeats!r}")


#: Named presets. ``paper-l16`` / ``paper-l33`` are the paper's Layer16 / Layer33 with
#: full-resolution gates (Tables 1, 3, 6). ``tiny`` is the CPU tutorial network: C = 16 keeps
#: every pointwise convolution small, L = 8 still leaves room for routes that stay at a scale
#: for several layers (FCN-32s, U-Net, ...), and 4 classes fit the embedded data set
#: (background + 3 colour pairs). At 128x128 input a forward costs about 0.03 GFLOPs.
PRESETS: dict[str, ModelConfig] = {
    "paper-l16": ModelConfig(width=64, depth=16, num_classes=19),
    "paper-l33": ModelConfig(width=64, depth=33, num_classes=19),
    "tiny": ModelConfig(width=16, depth=8, num_classes=4),
}

#: Input size (H, W) each preset is meant for: Cityscapes evaluation size, and the tiny data.
DEFAULT_SIZES: dict[str, tuple[int, int]] = {
    "paper-l16": (1024, 2048),
    "paper-l33": (1024, 2048),
    "tiny": (128, 128),
}


def preset(name: str, **overrides) -> ModelConfig:
    """The named preset, optionally with fields overridden (``preset("tiny", activation="fix")``)."""
    check_choice("preset", name, PRESETS)
    return PRESETS[name].replace(**overrides) if overrides else PRESETS[name]


def parse_size(text: str) -> tuple[int, int]:
    """Parse ``"HxW"`` (or a single ``"S"`` for a square) and check it is at least 32x32."""
    parts = text.lower().replace(" ", "").split("x")
    try:
        if len(parts) == 1:
            height = width = int(parts[0])
        elif len(parts) == 2:
            height, width = int(parts[0]), int(parts[1])
        else:
            raise ValueError
    except ValueError:
        raise ConfigError(f"size must look like HxW, e.g. 512x1024, got {text!r}") from None
    check_input_size(height, width)
    return height, width


def check_input_size(height: int, width: int) -> None:
    if height < MIN_INPUT_SIDE or width < MIN_INPUT_SIDE:
        raise ConfigError(
            f"input size {height}x{width} is too small: each side must be >= {MIN_INPUT_SIDE} "
            "because the network down-samples by 32"
        )
