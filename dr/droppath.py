"""Scheduled Drop Path (paper Table 5, after NASNet and Auto-DeepLab).

Each image's non-identity cell output is dropped with probability 1 - keep, where

    keep = 1 - step_rate * layer_rate * p,

``p`` the final drop probability (0.3 in the paper's 558k-iteration run), ``layer_rate`` = l / L
for routing layer l (deeper layers drop more) and ``step_rate`` = iteration / total iterations
(dropping grows during training). Kept outputs are divided by ``keep`` so the expectation is
unchanged. Unlike the authors' code it uses the tensor's own device, so it runs on CPU and GPU.
"""

from __future__ import annotations

import torch


def scheduled_drop_prob(p: float, layer_rate: float, step_rate: float) -> float:
    """The drop probability 1 - keep = step_rate * layer_rate * p at this layer and step."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"drop path probability must be in [0, 1), got {p}")
    return min(max(step_rate, 0.0), 1.0) * min(max(layer_rate, 0.0), 1.0) * p


def drop_path(x: torch.Tensor, drop_prob: float) -> torch.Tensor:
    """Zero whole images of ``x`` (B, ...) with probability ``drop_prob``; rescale the rest."""
    if drop_prob <= 0.0:
        return x
    keep = 1.0 - drop_prob
    mask = torch.empty((x.shape[0],) + (1,) * (x.dim() - 1), device=x.device, dtype=x.dtype).bernoulli_(keep)
    return x * mask / keep
