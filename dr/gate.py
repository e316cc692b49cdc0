"""The soft conditional gate (paper Sec. 3.2.2, Eq. 2-3, Table 3), written plainly.

    G = F(w2, GAP(ReLU(BN(F(w1, X))))) + beta          (Eq. 2)
    alpha = delta(G),  delta = max(0, tanh(.))          (Eq. 3)

``F(w1, .)`` is a 1x1 convolution C -> C/2, ``F(w2, .)`` a 1x1 convolution C/2 -> P (one output
per path of the node, in the order keep, up, down) with bias beta, initialised to 1.5 so that
almost every path starts open (tanh(1.5) = 0.905; the He-normal weights add an image-dependent
term, which closes about 1% of a fresh tiny network's gates). alpha has one value per image and path: shape (B, P).
max(0, tanh) is exactly zero for G <= 0, which is what lets inference skip a path (Eq. 5-6).

Under a budget the paper down-samples the gate's input X by 4 per side ("small gate", Sec. 3.4).

Table 3 compares other activations: ``sigmoid`` (never exactly 0, so nothing is skipped) and
``softmax`` over the node's paths. ``fix`` is no gate at all (every alpha is 1, Network-Fix) and
is handled by the model, not by this module.

``gumbel`` is not from the paper but from pixel-wise attentional gating (``../shared/paper``
slides): *binary* gates. In training, alpha = 1[sigmoid((G + tau l) / tau) > 0.5] = 1[G + tau l > 0]
with logistic noise l = log u - log(1 - u) (the difference of two Gumbel variables), and the
gradient of the soft value sigmoid((G + tau l) / tau) passes straight through the threshold; tau
anneals from :data:`GUMBEL_TAU_START` to :data:`GUMBEL_TAU_END` over training. At inference
alpha = 1[G > 0]. The noise is scaled by tau so that the routes sampled in training become the
deterministic ones of inference as tau falls: with 1[G + l > 0] (tau dividing only the soft
value) a decision flips with probability sigmoid(-|G|) to the end, and a trained network (median
|G| 1.4, 21% of decisions flipped on average) trained on random routes and was evaluated on
deterministic ones: 69.8 mIoU against 91.2 with the noise annealed (Hard + Eq. 9 (A), seed 0).
This departs on purpose from the usual Gumbel-sigmoid, whose sample opens with probability
sigmoid(G) at every tau; here it opens with probability sigmoid(G / tau). Runs trained before the
change (commit e2cc1cd) are the old gate's.

This module is the version to read against the paper. :mod:`dr.gate_fast` computes the same
function with the same parameters faster; the model uses that one, and a test keeps them equal.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dr.config import GATE_INITS, check_activation

#: temperature schedule of the binary Gumbel gate: tau = start * (end / start) ** step_rate
GUMBEL_TAU_START = 1.0
GUMBEL_TAU_END = 0.1


def gumbel_temperature(step_rate: float) -> float:
    """tau at ``step_rate`` = iteration / total, annealed geometrically from 1.0 to 0.1."""
    return GUMBEL_TAU_START * (GUMBEL_TAU_END / GUMBEL_TAU_START) ** min(max(step_rate, 0.0), 1.0)


def gumbel_gate(logits: torch.Tensor, temperature: float, training: bool) -> torch.Tensor:
    """Binary gate: a straight-through Gumbel-sigmoid sample in training, 1[G > 0] at inference."""
    if not training:
        return (logits > 0).to(logits.dtype)
    u = torch.rand_like(logits).clamp_(1e-6, 1 - 1e-6)
    noise = temperature * (torch.log(u) - torch.log1p(-u))  # logistic (two Gumbel(0, 1) apart), annealed with tau
    soft = torch.sigmoid((logits + noise) / temperature)
    hard = (soft > 0.5).to(logits.dtype)
    return hard + (soft - soft.detach())  # value: exactly hard (0 or 1); gradient: the soft sample's


def gate_activation(
    logits: torch.Tensor, activation: str, *, training: bool = False, temperature: float = 1.0
) -> torch.Tensor:
    """delta(G) for gate logits G of shape (B, P)."""
    if activation == "tanh":
        return F.relu(torch.tanh(logits))  # max(0, tanh(G)), Eq. 3
    if activation == "sigmoid":
        return torch.sigmoid(logits)
    if activation == "softmax":
        return torch.softmax(logits, dim=1)  # paths of a node compete
    if activation == "gumbel":
        return gumbel_gate(logits, temperature, training)
    check_activation(activation, gated=True)
    raise AssertionError("unreachable")  # pragma: no cover


def path_weights(alpha: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """alpha (B, P) as P tensors (B, 1, 1, 1), alpha_j per image, ready to scale path j's (B, C, H, W)
    output (Eq. 4). Cut in one ``unbind``: ``alpha[:, j, None, None, None]`` per path would add four
    autograd nodes a path (a select and three unsqueezes) to every training step."""
    return alpha.reshape(*alpha.shape, 1, 1, 1).unbind(1)


def gate_input_size(height: int, width: int, small: bool) -> tuple[int, int]:
    """Spatial size the gate's convolution runs at: full, or down-sampled by 4 per side."""
    if not small:
        return height, width
    return max(1, height // 4), max(1, width // 4)


def small_gate_input(x: torch.Tensor) -> torch.Tensor:
    """X down-sampled bilinearly by 4 per side: the small gate's input (Sec. 3.4)."""
    return F.interpolate(x, size=gate_input_size(*x.shape[-2:], True), mode="bilinear", align_corners=False)


class SoftConditionalGate(nn.Module):
    """alpha = delta(G(X)) with G from Eq. 2; maps X (B, C, H, W) to alpha (B, num_paths).

    - ``channels``: C of the node; ``num_paths``: P, its outgoing paths (keep, up, down order);
    - ``activation``: delta, see :data:`dr.config.ACTIVATIONS` (every one but ``fix``);
    - ``small``: down-sample X bilinearly by 4 per side first (the paper does so under a budget);
    - ``bias``: beta's initial value (1.5); ``init``: ``he`` or ``small`` (see :meth:`reset_parameters`).
    """

    def __init__(
        self,
        channels: int,
        num_paths: int,
        *,
        activation: str = "tanh",
        small: bool = False,
        bias: float = 1.5,
        init: str = "he",
    ):
        super().__init__()
        check_activation(activation, gated=True)
        hidden = max(1, channels // 2)
        self.activation = activation
        self.small = small
        self.temperature = GUMBEL_TAU_START  # used by the binary "gumbel" gate only; set by training
        self.reduce = nn.Conv2d(channels, hidden, 1, bias=False)  # F(w1, .)
        self.norm = nn.BatchNorm2d(hidden)  # N
        self.logit = nn.Conv2d(hidden, num_paths, 1, bias=True)  # F(w2, .) + beta
        self.reset_parameters(bias, init)

    def reset_parameters(self, bias: float = 1.5, init: str = "he") -> None:
        """He-normal (fan_in) F(w1); beta = ``bias``; F(w2) He-normal (``init="he"``, the paper's
        "normal distribution [He et al.]" and the authors' code) or N(0, 0.01) (``init="small"``: G
        starts close to beta for every image, so every path starts open whatever the image)."""
        if init not in GATE_INITS:
            raise ValueError(f"unknown gate init {init!r}; choose one of {', '.join(GATE_INITS)}")
        nn.init.kaiming_normal_(self.reduce.weight, mode="fan_in", nonlinearity="relu")
        if init == "he":
            nn.init.kaiming_normal_(self.logit.weight, mode="fan_in", nonlinearity="relu")
        else:
            nn.init.normal_(self.logit.weight, std=0.01)
        nn.init.constant_(self.logit.bias, bias)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """G of Eq. 2, shape (B, P)."""
        if self.small:  # X down-sampled by 4 per side (Sec. 3.4)
            x = small_gate_input(x)
        g = F.relu(self.norm(self.reduce(x)))  # sigma(N(F(w1, X))): (B, C/2, h, w)
        g = g.mean(dim=(2, 3), keepdim=True)  # GAP: (B, C/2, 1, 1)
        return self.logit(g).flatten(1)  # F(w2, .) + beta: (B, P)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """alpha = delta(G): (B, P)."""
        return gate_activation(self.logits(x), self.activation, training=self.training, temperature=self.temperature)


class ConstantGate(nn.Module):
    """A gate that does not look at X: G = beta, one learned value per path (Eq. 2 without its image
    term), and alpha = max(0, tanh(G)) (Eq. 3), the same for every image; beta starts at ``bias``
    (the config's ``gate_bias``, 1.5). ``activation="constant"`` builds a network of these: learned
    path weights (a path closes for every image once its beta is <= 0) without the image context
    of G(X), the step between Network-Fix and Dynamic-Raw in the study's decomposition;
    :mod:`dr.bench.train_step` also swaps them into a gated network to time what G(X) costs."""

    def __init__(self, num_paths: int, bias: float = 1.5):
        super().__init__()
        self.beta = nn.Parameter(torch.full((num_paths,), float(bias)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(torch.tanh(self.beta)).expand(len(x), -1)  # (B, P)
