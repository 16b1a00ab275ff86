"""GPUOffload: the last layers of a Model (and perhaps its output head) on the GPU.

The model's CPU layers hand the hidden states over once per batch (one upload); the offloaded layers run on
device buffers; the states come back once (one download), unless the head is on the GPU too, which downloads
the logits instead. Nothing inside a step waits for the device but those copies.
"""

import numpy as np
from numba import cuda

from quant.kernels.cuda import elementwise, target
from quant.kernels.cuda.matrix import MATVEC_MAX_TOKENS, DeviceGroup

from .layer import Buffers, DeviceNorm, GPULayer
from .placement import Placement, place


class GPUOffload:
    def __init__(self, model, n_gpu_layers: int, device: target.DeviceInfo):
        """model: a Model whose layers are all still on the CPU; `device` from runtime.gpu.open_gpu."""
        c = model.config
        self.device, self.config = device, c
        self.placement: Placement = place(c.n_layer, n_gpu_layers)
        tables = {}  # id(RoPE) -> its (cos, sin) on the device, shared by the layers that use it
        for layer in model.layers[self.placement.first:]:
            if id(layer.rope) not in tables:
                r = layer.rope
                tables[id(layer.rope)] = ((cuda.to_device(r.cos), cuda.to_device(r.sin)) if r is not None else
                                          (cuda.to_device(np.zeros((1, 1), np.float32)),) * 2)
        self.layers = [GPULayer(layer, model.n_ctx, tables) for layer in model.layers[self.placement.first:]]
        self.head = None
        if self.placement.head:
            self.output_norm = DeviceNorm(model.output_norm)
            self.head = DeviceGroup((model.output,), (model.output_bias,))
        self.n_vocab = model.n_vocab
        self.nbytes = (sum(layer.nbytes for layer in self.layers) + sum(t.nbytes for p in tables.values() for t in p)
                       + (self.head.nbytes + self.output_norm.nbytes if self.head is not None else 0))
        self._buffers: dict = {}
        self._last: Buffers | None = None

    def __str__(self) -> str:
        return f"{self.placement} on {self.device}: {self.nbytes / 2**20:.1f} MiB of weights and KV cache"

    def _buffers_for(self, n: int) -> Buffers:
        b = self._buffers.get(n)
        if b is None:
            self._buffers = {k: v for k, v in self._buffers.items() if k == 1}
            b = self._buffers[n] = Buffers(n, self.config, self.n_vocab if self.head is not None else None)
        return b

    def forward(self, x: np.ndarray, pos: int) -> None:
        """x (n, n_embd): the hidden states entering the first offloaded layer at positions pos..; they come back
        in place from the last one unless the head is on the GPU too (then see `logits`)."""
        b = self._last = self._buffers_for(x.shape[0])
        b.x.copy_to_device(x)
        for layer in self.layers:
            layer(b, pos)
        if self.head is None:
            b.x.copy_to_host(x)

    def logits(self, out: np.ndarray) -> None:
        """out (m, n_vocab): the logits of the last m positions of the latest `forward` (the head on the GPU)."""
        b, m = self._last, out.shape[0]
        x, h, logits = b.x[b.n - m:], b.h[b.n - m:], b.logits[b.n - m:]
        self.output_norm(x, h)
        self.head(h, logits)
        if self.config.final_logit_softcap:
            elementwise.softcap(logits, self.config.final_logit_softcap)
        logits.copy_to_host(out)

    def warmup(self, n_ctx: int) -> int:
        """Compile every kernel the offloaded part runs (a decode step and a batch past the matvec's limit, at
        position 0, on scratch buffers): kernels compile on their first launch. Returns the kernels compiled."""
        start = target.compiles()
        for n in (1, min(MATVEC_MAX_TOKENS + 1, n_ctx)):
            x = np.zeros((n, self.config.n_embd), np.float32)
            self.forward(x, 0)
            if self.head is not None:
                self.logits(np.empty((n, self.n_vocab), np.float32))
        self._buffers = {}
        return target.compiles() - start
