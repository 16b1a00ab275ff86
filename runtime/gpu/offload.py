"""GPUOffload: the last layers of a Model (and perhaps its output head) on the GPU.

The model's CPU layers hand the hidden states over once per batch (one upload); the offloaded layers run on
device buffers; the states come back once (one download), unless the head is on the GPU too, which downloads
the logits instead. Nothing inside a step waits for the device but those copies. Each KV cache (Model.new_cache)
holds the offloaded layers' keys and values on the device, as fp16 bits: `device` of kvcache.KVCache.
"""

import numpy as np
from numba import cuda

from quant.kernels.cuda import elementwise, target
from quant.kernels.cuda.matrix import MATVEC_MAX_TOKENS, DeviceGroup

from .layer import Buffers, DeviceNorm, GPULayer
from .placement import Placement, place


class GPUOffload:
    def __init__(self, model, n_gpu_layers: int, device: target.DeviceInfo):
        """model: a Model whose layers are all still on the CPU; device: the opened GPU (target.open_device)."""
        c = model.config
        self.device, self.config = device, c
        self.placement: Placement = place(c.n_layer, n_gpu_layers)
        tables = {}  # id(RoPE) -> its (cos, sin) on the device, shared by the layers that use it
        for layer in model.layers[self.placement.first:]:
            if id(layer.rope) not in tables:
                r = layer.rope
                tables[id(layer.rope)] = ((cuda.to_device(r.cos), cuda.to_device(r.sin)) if r is not None else
                                          (cuda.to_device(np.zeros((1, 1), np.float32)),) * 2)
        self.layers = [GPULayer(layer, tables) for layer in model.layers[self.placement.first:]]
        self.head = None
        if self.placement.head:
            self.output_norm = DeviceNorm(model.output_norm)
            self.head = DeviceGroup((model.output,), (model.output_bias,))
        self.n_vocab = model.n_vocab
        self.nbytes = (sum(layer.nbytes for layer in self.layers) + sum(t.nbytes for p in tables.values() for t in p)
                       + (self.head.nbytes + self.output_norm.nbytes if self.head is not None else 0))
        self.cache_bytes = 2 * 2 * len(self.layers) * c.n_head_kv * model.n_ctx * c.head_dim  # per n_ctx cache
        self._buffers: dict = {}
        self._last: Buffers | None = None

    def __str__(self) -> str:
        return (f"{self.placement} on {self.device}: {self.nbytes / 2**20:.1f} MiB of weights, "
                f"{self.cache_bytes / 2**20:.1f} MiB per KV cache")

    def new_cache(self, n_ctx: int) -> list:
        """The offloaded layers' K/V for n_ctx positions: (k, v) per layer, uint16 (n_head_kv, n_ctx, head_dim)."""
        c = self.config
        shape = (c.n_head_kv, n_ctx, c.head_dim)
        return [(cuda.device_array(shape, np.uint16), cuda.device_array(shape, np.uint16)) for _ in self.layers]

    def read_cache(self, device_cache: list, n: int) -> tuple:
        """(k, v) float32 (n_layers, n_head_kv, n, head_dim) of positions 0..n-1 (a session's saved state)."""
        return tuple(np.stack([a.copy_to_host()[:, :n] for a in arrays]).view(np.float16).astype(np.float32)
                     for arrays in zip(*device_cache, strict=True))

    def write_cache(self, device_cache: list, k: np.ndarray, v: np.ndarray) -> None:
        """Positions 0..n-1 of the cache from k, v float32 (n_layers, n_head_kv, n, head_dim), rounded to fp16."""
        n = k.shape[2]
        for (dk, dv), lk, lv in zip(device_cache, k, v, strict=True):
            for dev, values in ((dk, lk), (dv, lv)):
                host = dev.copy_to_host()
                host[:, :n] = values.astype(np.float16).view(np.uint16)
                dev.copy_to_device(host)

    def _buffers_for(self, n: int) -> Buffers:
        b = self._buffers.get(n)
        if b is None:
            self._buffers = {k: v for k, v in self._buffers.items() if k == 1}
            b = self._buffers[n] = Buffers(n, self.config, self.n_vocab if self.head is not None else None)
        return b

    def forward(self, x: np.ndarray, seqs: list, fetch: bool = False) -> None:
        """x (n, n_embd): the hidden states entering the first offloaded layer, rows of the sequences `seqs`: (first
        row, rows, position of the first, KV cache's `device`) each. They come back in place from the last layer
        when the head is on the CPU, or with fetch (else see `logits`)."""
        b = self._last = self._buffers_for(x.shape[0])
        b.x.copy_to_device(x)
        for il, layer in enumerate(self.layers):
            layer(b, [(r, m, pos, *cache[il]) for r, m, pos, cache in seqs])
        if fetch or self.head is None:
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
        n_max = min(MATVEC_MAX_TOKENS + 1, n_ctx)
        scratch = self.new_cache(n_max)
        for n in (1, n_max):
            self.forward(np.zeros((n, self.config.n_embd), np.float32), [(0, n, 0, scratch)])
            if self.head is not None:
                self.logits(np.empty((n, self.n_vocab), np.float32))
        self._buffers = {}
        return target.compiles() - start
