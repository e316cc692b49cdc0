"""The soft conditional gate of :mod:`dr.gate`, computed faster (same function, same parameters).

A gate's work is tiny (a 1x1 convolution C -> C/2 and a dot product per path), so on a small
network its time is mostly the fixed cost of each operation, and with several CPU threads mostly
the cost of waking the threads of a convolution kernel for a few thousand multiply-adds. Three
equivalent computations avoid the convolution kernels:

- F(w1, X) as a ``linear`` layer over the pixels, channels last: (B, h, w, C) @ (C, C/2), a plain
  matrix product; its batch normalisation is the same ``BatchNorm2d`` module applied to the
  (B * h * w, C/2, 1, 1) result, which has the same per-channel statistics over (B, h, w) (and the
  same running statistics; a ``SyncBatchNorm`` that replaces it for distributed training too);
- the small gate's bilinear down-sampling by 4 as an average pool: with ``align_corners=False``
  and an exact factor of 4, output pixel i samples input position 4i + 1.5, the mean of the
  central 2x2 pixels of each 4x4 block, i.e. a 2x2 average pool of stride 4 started at offset 1
  (the general interpolation is used when a side is not a multiple of 4);
- F(w2, .) on the pooled vector as a ``linear`` layer.

Measured with torch 2.14 on the 2-core CPU machine, in one process each (``python -m dr
bench-train --preset tiny``, whose ``raw_small_gate_plain`` row is the plain gate; README,
"Training: what was measured"): a training step of Dynamic-Raw (small gate) over Network-Fix takes
1.26 with this computation against 1.33 with the plain one at 2 threads, but 1.26 against 1.19 at
one thread, where a convolution wakes no threads. So in training (autograd recording) with one
thread the plain computation runs. At inference this one is as fast as or faster than a matrix
product on the NCHW layout, ``matmul(w1, x.reshape(B, C, h * w))`` (6.7 against 10.3 ms for a full-resolution gate on a
1 x 64 x 128 x 256 input, 2 threads).

The parameters (and state-dict names and shapes) are exactly those of
:class:`dr.gate.SoftConditionalGate`, so a checkpoint loads into either; ``tests`` check that
both give the same alpha, the same gradients and the same running statistics. On CUDA with
TF32 allowed for cuDNN (PyTorch's default there) the plain gate's convolution rounds to TF32 while
``linear`` stays float32 unless ``torch.backends.cuda.matmul.allow_tf32`` is set: the two then
differ at about 1e-3 relative.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dr.gate import SoftConditionalGate, gate_input_size


def downsample_by_4(x: torch.Tensor) -> torch.Tensor:
    """Bilinear down-sampling by 4 per side, as an average pool where the sides allow it."""
    height, width = x.shape[-2:]
    if height % 4 == 0 and width % 4 == 0:
        return F.avg_pool2d(x[..., 1:, 1:], kernel_size=2, stride=4)
    return F.interpolate(x, size=gate_input_size(height, width, True), mode="bilinear", align_corners=False)


class FastSoftConditionalGate(SoftConditionalGate):
    """:class:`~dr.gate.SoftConditionalGate` with a cheaper :meth:`logits`."""

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and torch.get_num_threads() == 1:  # training on one thread: see above
            return super().logits(x)
        if self.small:
            x = downsample_by_4(x)
        batch, channels, height, width = x.shape
        z = F.linear(x.permute(0, 2, 3, 1), self.reduce.weight.view(-1, channels))  # F(w1, X): (B, h, w, C/2)
        hidden = z.shape[-1]
        z = self.norm(z.reshape(-1, hidden, 1, 1))  # N over (B, h, w) per channel
        g = F.relu(z).view(batch, height * width, hidden).mean(dim=1)  # GAP: (B, C/2)
        return F.linear(g, self.logit.weight.flatten(1), self.logit.bias)  # F(w2, .) + beta: (B, P)
