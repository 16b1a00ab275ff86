"""One decoder layer on the GPU: a DecoderLayer's weights uploaded in their GGML blocks, its forward pass as
kernel launches over preallocated device buffers, over keys and values in an fp16 cache on the device.

The launches mirror layers.DecoderLayer step for step; a llama-style layer decoding one token takes 9: norm,
Q|K|V, RoPE + KV store, attention, output projection + residual, norm, up|gate, activation, down + residual.
"""

import numpy as np
from numba import cuda

from quant.kernels.cuda import attention, elementwise, moe, norm, rope
from quant.kernels.cuda.matrix import DeviceGroup, DeviceMatrix
from quant.kernels.cuda.target import nothing

from ..errors import UnsupportedError
from ..layers import ACTIVATIONS, DecoderLayer, Norm

_ACTIVATION_NAMES = {fn: name for name, fn in ACTIVATIONS.items()}


def upload(a: np.ndarray | None):
    """A float32 vector (a norm's weight, a bias) on the device; None stays None."""
    return None if a is None else cuda.to_device(np.ascontiguousarray(a, np.float32))


class DeviceNorm:
    def __init__(self, n: Norm):
        self.w, self.b, self.eps, self.rms = upload(n.weight), upload(n.bias), n.eps, n.rms

    @property
    def nbytes(self) -> int:
        return self.w.nbytes + (self.b.nbytes if self.b is not None else 0)

    def __call__(self, x, out, col0: int = 0, groups: int = 1, accumulate: bool = False) -> None:
        # x (n, cols) -> out: groups of len(w) columns from col0 normalized (added to out with accumulate)
        norm.norm(x, self.w, nothing() if self.b is None else self.b, self.eps, self.rms, out, col0, groups,
                  accumulate)


def _norm(n: Norm | None) -> DeviceNorm | None:
    return None if n is None else DeviceNorm(n)


class Buffers:
    """Device activations for a batch of n tokens (layers.Buffers' counterpart, plus the MoE routing state). The
    MLP's are flat, viewed at the shape a layer needs (dense: n tokens; MoE: n * k (token, slot) pairs)."""

    def __init__(self, n: int, c, n_vocab: int | None):
        f = np.float32
        nq, nkv, k = c.n_head * c.head_dim, c.n_head_kv * c.head_dim, max(c.n_expert_used, 1)
        self.n = n
        self.x, self.h, self.o = (cuda.device_array((n, c.n_embd), f) for _ in range(3))  # (n, n_embd)
        self.qkv = cuda.device_array((n, nq + 2 * nkv), f)  # (n, Q | K | V)
        self.att = cuda.device_array((n, nq), f)
        self._ug, self._u = cuda.device_array(n * k * 2 * c.n_ff, f), cuda.device_array(n * k * c.n_ff, f)
        if c.n_expert:
            self.router = cuda.device_array((n, c.n_expert), f)
            self.ids, self.weights = cuda.device_array(n * k, np.int32), cuda.device_array(n * k, f)
            self.y = cuda.device_array((n * k, c.n_embd), f)  # the experts' outputs
        self.logits = None if n_vocab is None else cuda.device_array((n, n_vocab), f)

    def ug(self, rows: int, cols: int):  # (rows, up | gate) or (rows, up)
        return self._ug[:rows * cols].reshape(rows, cols)

    def u(self, rows: int, cols: int):  # (rows, n_ff) activated
        return self._u[:rows * cols].reshape(rows, cols)


class GPULayer:
    def __init__(self, layer: DecoderLayer, rope_tables: dict):
        w = layer.w
        self.n_head, self.n_kv, self.hd = layer.n_head, layer.n_head_kv, layer.head_dim
        if self.hd > attention.MAX_HEAD_DIM:
            raise UnsupportedError(f"GPU attention supports heads of up to {attention.MAX_HEAD_DIM} dims, "
                                   f"this model's have {self.hd}")
        self.scale, self.window, self.parallel, self.clamp = layer.scale, layer.window, layer.parallel, layer.clamp
        self.slopes = upload(layer.alibi)
        self.act = _ACTIVATION_NAMES[layer.act]
        self.rope = layer.rope
        self.cos, self.sin = rope_tables[id(layer.rope)]
        self.attn_norm, self.ffn_norm = DeviceNorm(w.attn_norm), _norm(w.ffn_norm)
        self.q_norm, self.k_norm = _norm(w.q_norm), _norm(w.k_norm)
        self.post_attn_norm, self.post_ffn_norm = _norm(w.post_attn_norm), _norm(w.post_ffn_norm)
        self.qkv = DeviceGroup((w.wq, w.wk, w.wv), (w.bq, w.bk, w.bv))
        self.wo = DeviceGroup((w.wo,), (w.bo,))
        self.moe = w.moe
        if w.moe is None:
            self.gated = w.w_gate is not None
            self.up_gate = DeviceGroup((w.w_up, w.w_gate) if self.gated else (w.w_up,), (w.b_up,))
            self.down = DeviceGroup((w.w_down,), (w.b_down,))
        else:
            if w.post_ffn_norm is not None:
                raise UnsupportedError("a mixture-of-experts layer with a post-MLP norm is not supported on the GPU")
            m = w.moe
            self.router = DeviceMatrix(m.router.raw, m.router.qtype, m.router.n_cols)
            self.experts_ug, self.experts_down = DeviceGroup((m.up, m.gate)), DeviceGroup((m.down,))

    @property
    def nbytes(self) -> int:
        """Device bytes of the weights (tables shared with other layers left out)."""
        parts = [self.attn_norm, self.ffn_norm, self.q_norm, self.k_norm, self.post_attn_norm, self.post_ffn_norm,
                 self.qkv, self.wo, self.slopes]
        parts += [self.up_gate, self.down] if self.moe is None else [self.router, self.experts_ug, self.experts_down]
        return sum(p.nbytes for p in parts if p is not None)

    def __call__(self, b: Buffers, seqs: list) -> None:
        """b.x (n, n_embd) updated in place, on the device. seqs: (first row, rows, position of the first row,
        k_cache, v_cache) of each sequence; the matrix products take all rows at once, RoPE and attention each
        sequence apart (as DecoderLayer.run)."""
        self.attn_norm(b.x, b.h)
        self.qkv(b.h, b.qkv)
        if self.clamp:
            elementwise.clamp(b.qkv, self.clamp)
        if self.q_norm is not None:
            self.q_norm(b.qkv, b.qkv, 0, self.n_head)
            self.k_norm(b.qkv, b.qkv, self.n_head * self.hd, self.n_kv)
        n_rot = 0 if self.rope is None else self.rope.n_rot
        slopes = nothing() if self.slopes is None else self.slopes
        for r, m, pos, k_cache, v_cache in seqs:
            qkv = b.qkv[r:r + m]
            rope.rope(qkv, self.n_head, self.n_kv, self.hd, n_rot, n_rot and self.rope.neox, self.cos, self.sin, pos,
                      k_cache, v_cache)
            attention.attention(qkv, self.n_head, self.n_kv, self.hd, k_cache, v_cache, pos, self.scale, self.window,
                                slopes, b.att[r:r + m])
        if self.parallel and self.ffn_norm is not None:  # None (falcon 7B): the MLP reads attn_norm's h too
            self.ffn_norm(b.x, b.h)  # of the block input, before the attention residual
        self._residual(self.wo, b.att, self.post_attn_norm, b)
        if not self.parallel:
            self.ffn_norm(b.x, b.h)
        if self.moe is None:
            ug, u = b.ug(b.n, self.up_gate.n_rows), b.u(b.n, self.down.n_cols)
            self.up_gate(b.h, ug)
            elementwise.activate(ug, self.gated, self.act, u)
            self._residual(self.down, u, self.post_ffn_norm, b)
        else:
            self._experts(b)

    @staticmethod
    def _residual(w: DeviceGroup, a, post_norm: DeviceNorm | None, b: Buffers) -> None:
        """b.x += [post_norm](w a): the product added in its epilogue, or normalized into the residual."""
        if post_norm is None:
            w(a, b.x, add=True)
        else:
            w(a, b.o)
            post_norm(b.o, b.x, accumulate=True)

    def _experts(self, b: Buffers) -> None:
        """The routed experts (layers.MoE): router logits, top-k on the device, each (token, slot) through its
        expert's up|gate and down, the weighted sum added to b.x."""
        k, n_ff = self.moe.n_used, self.moe.up[0].n_rows
        ug, u = b.ug(b.n * k, 2 * n_ff), b.u(b.n * k, n_ff)
        self.router(b.h, b.router, nothing())
        moe.route(b.router, k, b.ids, b.weights)
        self.experts_ug.experts(b.h, ug, b.ids, k)
        elementwise.activate(ug, True, self.act, u)
        self.experts_down.experts(u, b.y, b.ids, 1)
        moe.combine(b.y, b.weights, k, b.x)

