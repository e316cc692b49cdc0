"""The soft conditional gate of :mod:`dr.gate`, computed faster (same function, same parameters).

A gate's work is tiny (a 1x1 convolution C -> C/2 and a dot product per path), so on a small
network its time is mostly the fixed cost of each operation, and with several CPU threads mostly
the cost of waking the threads of a convolution kernel for a few thousand multiply-adds. Two
equivalent computations avoid the convolution kernels:

- F(w1, X) as a ``linear`` layer over the pixels, channels last: (B, h, w, C) @ (C, C/2), a plain
  matrix product; its batch normalisation is the same ``BatchNorm2d`` module applied to the
  (B * h * w, C/2, 1, 1) result, which has the same per-channel statistics over (B, h, w) (and the
  same running statistics; a ``SyncBatchNorm`` that replaces it for distributed training too);
- F(w2, .) on the pooled vector as a ``linear`` layer.

The small gate's bilinear down-sampling by 4 is the plain gate's (:func:`dr.gate.small_gate_input`).
With ``align_corners=False`` and an exact factor of 4 it equals a 2x2 average pool of stride 4
started at offset 1 (output pixel i samples input position 4i + 1.5), which this gate used until
it was timed alone: on channels-last features the pool takes 2-12 times as long as
``F.interpolate`` forward and 4-17 times forward and backward (2 threads; forward 0.030 against
0.013 ms for tiny's 8 x 16 x 32 x 32, forward and backward 0.22 against 0.05 ms there and 1.31
against 0.08 ms for 2 x 64 x 64 x 64).

Measured with torch 2.14 on the 2-core CPU machine, in one process each (``python -m dr
bench-train --preset tiny``, whose ``raw_small_gate_plain`` row is the plain gate; README,
"Performance", and ``docs/performance-log.md``): a training step of Dynamic-Raw (small gate) over
Network-Fix takes 1.26 with this computation against 1.33 with the plain one at 2 threads, but
1.26 against 1.19 at one thread, where a convolution wakes no threads. So in training (autograd
recording) with one thread the plain computation runs (measured again with the interpolation: four
small gates, one at each of tiny's scales, batch 8, forward and backward together take 1.21 ms
plain against 1.25 ms this way at one thread, 2.51 against 1.37 ms at two). At inference this one
is as fast as or faster than a matrix product on the NCHW layout, ``matmul(w1, x.reshape(B, C, h *
w))`` (6.7 against 10.3 ms for a full-resolution gate on a 1 x 64 x 128 x 256 input, 2 threads).

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

from dr.gate import SoftConditionalGate, small_gate_input


class FastSoftConditionalGate(SoftConditionalGate):
    """:class:`~dr.gate.SoftConditionalGate` with a cheaper :meth:`logits`."""

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and torch.get_num_threads() == 1:  # training on one thread: see above
            return super().logits(x)
        if self.small:
            x = small_gate_input(x)
        batch, channels, height, width = x.shape
        z = F.linear(x.permute(0, 2, 3, 1), self.reduce.weight.view(-1, channels))  # F(w1, X): (B, h, w, C/2)
        hidden = z.shape[-1]
        z = self.norm(z.reshape(-1, hidden, 1, 1))  # N over (B, h, w) per channel
        g = F.relu(z).view(batch, height * width, hidden).mean(dim=1)  # GAP: (B, C/2)
        return F.linear(g, self.logit.weight.flatten(1), self.logit.bias)  # F(w2, .) + beta: (B, P)
