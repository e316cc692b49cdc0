"""The soft conditional gate (paper Sec. 3.2.2, Eq. 2-3, Table 3).

    G = F(w2, GAP(ReLU(BN(F(w1, X))))) + beta          (Eq. 2)
    alpha = delta(G),  delta = max(0, tanh(.))          (Eq. 3)

``F(w1, .)`` is a 1x1 convolution C -> C/2, ``F(w2, .)`` a 1x1 convolution C/2 -> P (one output
per path of the node, in the order keep, up, down) with bias beta, initialised to 1.5 so every
path starts open (tanh(1.5) = 0.905). alpha has one value per image and path: shape (B, P).
max(0, tanh) is exactly zero for G <= 0, which is what lets inference skip a path (Eq. 5-6).

Table 3 compares other activations: ``sigmoid`` (never exactly 0, so nothing is skipped) and
``softmax`` over the node's paths. ``fix`` is no gate at all (every alpha is 1, Network-Fix) and
is handled by the model, not by this module.

``gumbel`` is not from the paper but from pixel-wise attentional gating (``../shared/paper``
slides): *binary* gates. In training, alpha = 1[sigmoid((G + l) / tau) > 0.5] with logistic noise
l = log u - log(1 - u) (the difference of two Gumbel variables), and the gradient of the soft
value sigmoid((G + l) / tau) passes straight through the threshold; tau anneals from
:data:`GUMBEL_TAU_START` to :data:`GUMBEL_TAU_END` over training. At inference alpha = 1[G > 0].
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

GATED_ACTIVATIONS = ("tanh", "sigmoid", "softmax", "gumbel")
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
    noise = torch.log(u) - torch.log1p(-u)  # logistic = difference of two Gumbel(0, 1)
    soft = torch.sigmoid((logits + noise) / temperature)
    hard = (soft > 0.5).to(logits.dtype)
    return hard + (soft - soft.detach())  # value: exactly hard (0 or 1); gradient: the soft sample's


def gate_activation(logits: torch.Tensor, activation: str, *, training: bool = False,
                    temperature: float = 1.0) -> torch.Tensor:
    """delta(G) for gate logits G of shape (B, P)."""
    if activation == "gumbel":
        return gumbel_gate(logits, temperature, training)
    if activation == "tanh":
        return F.relu(torch.tanh(logits))  # max(0, tanh(G)), Eq. 3
    if activation == "sigmoid":
        return torch.sigmoid(logits)
    if activation == "softmax":
        return torch.softmax(logits, dim=1)  # paths of a node compete
    raise ValueError(f"unknown gate activation {activation!r}; choose one of {', '.join(GATED_ACTIVATIONS)}")


def gate_input_size(height: int, width: int, small: bool) -> tuple[int, int]:
    """Spatial size the gate's convolution runs at: full, or down-sampled by 4 per side."""
    if not small:
        return height, width
    return max(1, height // 4), max(1, width // 4)


def downsample_by_4(x: torch.Tensor) -> torch.Tensor:
    """Bilinear down-sampling by 4 per side (the small gate's input), computed cheaply.

    With ``align_corners=False`` and an exact factor of 4, output pixel i samples input position
    4i + 1.5: the mean of the central 2x2 pixels of each 4x4 block. That is an average pool of
    kernel 2 and stride 4 started at offset 1, far cheaper to run and to differentiate than the
    general interpolation, which is used only when a side is not a multiple of 4.
    """
    height, width = x.shape[-2:]
    if height % 4 == 0 and width % 4 == 0:
        return F.avg_pool2d(x[..., 1:, 1:], kernel_size=2, stride=4)
    size = gate_input_size(height, width, True)
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class VectorConv1x1(nn.Conv2d):
    """A 1x1 convolution applied to a (B, C, 1, 1) tensor, computed as a matrix product.

    Same parameters (and state-dict shapes) as ``nn.Conv2d(C_in, C_out, 1)``; on a pooled vector
    a plain ``linear`` avoids the convolution kernel's fixed cost, which dominates at this size.
    Returns (B, C_out).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.flatten(1), self.weight.flatten(1), self.bias)


class MatmulConv1x1(nn.Conv2d):
    """A bias-free 1x1 convolution computed as a batched matrix product over the pixels.

    Same parameters as ``nn.Conv2d(C_in, C_out, 1, bias=False)``; on the gate's small inputs the
    matrix product has a lower fixed cost than the convolution kernel. (B, C_in, H, W) -> (B, C_out, H, W).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        y = torch.matmul(self.weight.view(self.out_channels, channels), x.reshape(batch, channels, height * width))
        return y.view(batch, self.out_channels, height, width)


class SoftConditionalGate(nn.Module):
    """alpha = delta(G(X)) with G from Eq. 2; returns (B, num_paths)."""

    def __init__(
        self,
        channels: int,
        num_paths: int,
        *,
        activation: str = "tanh",
        small: bool = False,
        bias: float = 1.5,
    ):
        super().__init__()
        if activation not in GATED_ACTIVATIONS:
            raise ValueError(
                f"unknown gate activation {activation!r}; choose one of {', '.join(GATED_ACTIVATIONS)}"
            )
        hidden = max(1, channels // 2)
        self.activation = activation
        self.small = small
        self.temperature = GUMBEL_TAU_START  # used by the binary "gumbel" gate only; set by the model
        self.reduce = MatmulConv1x1(channels, hidden, 1, bias=False)  # F(w1, .)
        self.norm = nn.BatchNorm2d(hidden)  # N
        self.logit = VectorConv1x1(hidden, num_paths, 1, bias=True)  # F(w2, .) + beta, on the pooled vector
        self.reset_parameters(bias)

    def reset_parameters(self, bias: float = 1.5) -> None:
        """Kaiming normal for F(w1); a small F(w2) and beta = ``bias`` so that G is close to beta
        for every image and every path starts open (tanh(1.5) = 0.905), as Sec. 3.4 intends.
        (Kaiming-scaled w2 would already close some paths of a fresh network.)"""
        nn.init.kaiming_normal_(self.reduce.weight, mode="fan_in", nonlinearity="relu")
        nn.init.normal_(self.logit.weight, std=0.01)
        nn.init.constant_(self.logit.bias, bias)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """G of Eq. 2, shape (B, P)."""
        if self.small:
            x = downsample_by_4(x)
        g = F.relu(self.norm(self.reduce(x)))  # (B, C/2, h, w)
        g = g.mean(dim=(2, 3), keepdim=True)  # GAP -> (B, C/2, 1, 1)
        return self.logit(g)  # (B, P)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return gate_activation(self.logits(x), self.activation, training=self.training, temperature=self.temperature)
