"""Loading a GGUF model (weights stay memory-mapped) and its forward pass over a KV cache the caller owns."""

import os

import numba
import numpy as np

from quant import TYPES, GGMLType, QMatrix, blocks, dequantize

from . import archs
from .errors import ContextOverflowError, GGUFError, LlambaError, NumericsError, UnsupportedError
from .gguf import GGUFFile
from .kvcache import TYPES as CACHE_BYTES
from .kvcache import KVCache, cache_types
from .layers import Buffers, DecoderLayer, LayerWeights, MoE, Norm, RoPE, alibi_slopes, linear, matrices
from .threads import blas_threads, on_kernel_thread

DEFAULT_MAX_CTX = 4096
UBATCH = 512  # prompt tokens per pass: bounds the attention scores and activation buffers
MATRIX_TYPES = frozenset(TYPES) - {GGMLType.Q8_K}  # Q8_K only quantizes activations
# Kernel path of the output head. Unset: decode steps use the default path, and the last position of a prompt
# batch of >= Model.sgemm_tokens tokens (whose layers ran sgemm, float math) uses the float head, so the first
# sampled token sees the logits LLM.logits() gives. LLAMBA_HEAD_KERNELS=float|int: that path for every call.
HEAD_PATH = os.environ.get("LLAMBA_HEAD_KERNELS") or None


class Weights:
    """Checked access to the file's tensors: matrices as QMatrix, vectors as float32, never copied.
    The architectures' hooks (archs/base.py) load their tensors through it."""

    def __init__(self, gguf: GGUFFile, rms: bool = True, repack: bool = True):
        self.tensors, self.path, self.rms = gguf.tensors, gguf.path, rms  # rms False: norms are LayerNorms
        # repack: the types with 16-row kernels are interleaved into memory on first use (quant.interleave), and the
        # file's pages of those blocks released
        self.repack, self.release = repack, gguf.release

    def _matrix(self, raw: np.ndarray, qtype, n_cols: int) -> QMatrix:
        return QMatrix(raw, qtype, n_cols, interleave=self.repack, on_interleaved=self.release)

    def _get(self, name: str, shape: tuple, required: bool):
        # shape entries of None match any size
        t = self.tensors.get(name)
        if t is None:
            if required:
                raise GGUFError(f"{self.path}: tensor {name!r} is missing")
            return None
        if len(t.shape) != len(shape) or any(e is not None and e != s for s, e in zip(t.shape, shape, strict=True)):
            raise GGUFError(f"{self.path}: tensor {name!r} has shape {t.shape}, expected {shape}")
        return t

    def matrix(self, name: str, n_rows: int | None, n_cols: int, required: bool = True) -> QMatrix | None:
        t = self._get(name, (n_rows, n_cols), required)
        if t is None:
            return None
        self._check_type(name, t.qtype)
        return self._matrix(t.raw, t.qtype, n_cols)

    def fused(self, name: str, sizes: tuple, n_cols: int) -> tuple:
        """Row blocks of sizes `sizes` of a fused matrix `{name}.weight` (e.g. QKV) as zero-copy QMatrix views,
        and the matching slices of `{name}.bias` (None without one)."""
        n = sum(sizes)
        t = self._get(name + ".weight", (n, n_cols), True)
        self._check_type(name + ".weight", t.qtype)
        bias = self.vector(name + ".bias", n, False)
        ends = np.cumsum(sizes)
        return tuple((self._matrix(t.raw[e - s:e], t.qtype, n_cols), None if bias is None else bias[e - s:e])
                     for s, e in zip(sizes, ends, strict=True))

    @staticmethod
    def _check_type(name: str, qtype) -> None:
        if qtype not in MATRIX_TYPES:
            raise UnsupportedError(f"tensor {name!r} has type {qtype.name}, which llamba cannot multiply "
                                   f"(supported: {', '.join(sorted(x.name for x in MATRIX_TYPES))})")

    def experts(self, prefix: str, n_expert: int, n_rows: int, n_cols: int) -> list:
        """n_expert QMatrix views of `{prefix}_exps.weight` (n_expert, n_rows, n_cols), one slice per expert,
        or of older files' per-expert `{prefix}.E.weight`; nothing is read until an expert is used."""
        t = self._get(prefix + "_exps.weight", (n_expert, n_rows, n_cols), False)
        if t is None:
            return [self.matrix(f"{prefix}.{e}.weight", n_rows, n_cols) for e in range(n_expert)]
        self._check_type(prefix + "_exps.weight", t.qtype)
        return [self._matrix(t.raw[e], t.qtype, n_cols) for e in range(n_expert)]  # raw[e]: (n_rows, row_bytes)

    def vector(self, name: str, n: int, required: bool = True) -> np.ndarray | None:
        t = self._get(name, (n,), required)
        if t is None:
            return None
        if t.qtype == GGMLType.F32:
            return t.array()  # (n,) view of the map
        if t.qtype not in MATRIX_TYPES:
            raise UnsupportedError(f"tensor {name!r} has unsupported type {t.qtype.name}")
        return dequantize(t.raw[None], t.qtype, n)[0]  # small vector: a copy is fine

    def norm(self, name: str, n: int, eps: float, required: bool = True) -> Norm | None:
        w = self.vector(name + ".weight", n, required)
        return None if w is None else Norm(w, self.vector(name + ".bias", n, False), eps, self.rms)


def _layer_weights(w: Weights, c, il: int, required: tuple) -> LayerWeights:
    p, d, hd, eps = f"blk.{il}.", c.n_embd, c.head_dim, c.norm_eps
    nq = c.n_head * hd
    for name in required:
        if p + name not in w.tensors:
            raise GGUFError(f"{w.path}: tensor {p + name!r} is missing ({c.arch} needs it)")
    attn_norm, ffn_norm = c.layer_norms(w, p)
    return LayerWeights(
        attn_norm=attn_norm, **_qkv_weights(w, c, p),
        wo=w.matrix(p + "attn_output.weight", d, nq), bo=w.vector(p + "attn_output.bias", d, False),
        q_norm=w.norm(p + "attn_q_norm", hd, eps, False), k_norm=w.norm(p + "attn_k_norm", hd, eps, False),
        post_attn_norm=w.norm(p + "post_attention_norm", d, eps, False),
        ffn_norm=ffn_norm,
        **(_moe_weights(w, c, p) if c.n_expert else _mlp_weights(w, c, p)),
        b_up=w.vector(p + "ffn_up.bias", c.n_ff, False), b_down=w.vector(p + "ffn_down.bias", d, False),
        post_ffn_norm=w.norm(p + "post_ffw_norm", d, eps, False),
    )


def _qkv_weights(w: Weights, c, p: str) -> dict:
    """Separate attn_{q,k,v}, or views of a fused attn_qkv (rows: all of Q, then K, then V)."""
    nq, nkv, d = c.n_head * c.head_dim, c.n_head_kv * c.head_dim, c.n_embd
    if p + "attn_qkv.weight" in w.tensors:
        (wq, bq), (wk, bk), (wv, bv) = w.fused(p + "attn_qkv", (nq, nkv, nkv), d)
        return dict(wq=wq, wk=wk, wv=wv, bq=bq, bk=bk, bv=bv)
    return dict(wq=w.matrix(p + "attn_q.weight", nq, d), wk=w.matrix(p + "attn_k.weight", nkv, d),
                wv=w.matrix(p + "attn_v.weight", nkv, d), bq=w.vector(p + "attn_q.bias", nq, False),
                bk=w.vector(p + "attn_k.bias", nkv, False), bv=w.vector(p + "attn_v.bias", nkv, False))


def _mlp_weights(w: Weights, c, p: str) -> dict:
    return dict(w_gate=w.matrix(p + "ffn_gate.weight", c.n_ff, c.n_embd, False),
                w_up=w.matrix(p + "ffn_up.weight", c.n_ff, c.n_embd),
                w_down=w.matrix(p + "ffn_down.weight", c.n_embd, c.n_ff))


def _moe_weights(w: Weights, c, p: str) -> dict:
    d, ff, n = c.n_embd, c.n_ff, c.n_expert
    moe = MoE(router=w.matrix(p + "ffn_gate_inp.weight", n, d), gate=w.experts(p + "ffn_gate", n, ff, d),
              up=w.experts(p + "ffn_up", n, ff, d), down=w.experts(p + "ffn_down", n, d, ff), n_used=c.n_expert_used)
    return dict(w_up=None, w_down=None, moe=moe)


class Model:
    """A loaded model: `forward(tokens, pos, cache)` runs tokens at positions pos.. and fills `cache` there.

    The model holds no conversation state: each caller owns its KV caches (new_cache()), so several conversations
    share one set of weights. Its activation buffers are shared, though: one forward at a time per model.
    n_gpu_layers: the last layers (and the head past n_layer) run on the GPU, `gpu` the offload (runtime/gpu).
    type_k, type_v: the element type of the caches' keys and values (kvcache.TYPES: "f16", llama.cpp's default, "f32"
    or "q8_0"). repack: see load_model."""

    check_finite = True  # non-finite logits raise NumericsError (the warm-up's scratch models turn it off)

    def __init__(self, gguf: GGUFFile, config, n_ctx: int, n_gpu_layers: int = 0, main_gpu: int = 0,
                 type_k: str = "f16", type_v: str = "f16", repack: bool = True):
        self.gguf, self.config, self.n_ctx, self.arch = gguf, config, n_ctx, config.arch
        self.type_k, self.type_v = cache_types(type_k, type_v, config.head_dim, bool(n_gpu_layers))
        self.closed = False
        c, w = config, Weights(gguf, config.norm_rms, repack)
        self.embed = c.embedding(w, n_ctx)  # token ids and positions -> (n, n_embd)
        self.tok_embd = self.embed.tok  # (n_vocab, n_embd)
        self.n_vocab = self.tok_embd.n_rows
        self.output_norm = w.norm("output_norm", c.n_embd, c.norm_eps)
        self.output, self.output_bias = c.output(w, self.tok_embd)  # (n_vocab, n_embd), (n_vocab,) or None
        if HEAD_PATH is not None:  # a view of the same blocks (a tied embedding's lookups do not use the path)
            self.output = QMatrix(self.output.raw, self.output.qtype, c.n_embd, path=HEAD_PATH, interleave=repack,
                                  on_interleaved=w.release)
        self.batch_output = (self.output if HEAD_PATH is not None  # the head of a long prompt's last position
                             else QMatrix(self.output.raw, self.output.qtype, c.n_embd, path="float"))
        freq_factors = w.vector("rope_freqs.weight", c.n_rot // 2, False)  # llama3-style scaling

        ropes = {}  # (base, scaling) -> RoPE, tables shared by the layers that use them
        required = archs.get(c.arch).LAYER_TENSORS
        alibi = alibi_slopes(c.n_head, c.alibi_max_bias) if c.alibi_max_bias else None  # (n_head,)
        self.layers = []
        for il in range(c.n_layer):
            key = c.layer_rope(il)
            if key not in ropes and c.use_rope:
                ropes[key] = RoPE(c.n_rot, n_ctx, key[0], c.rope_neox, key[1], freq_factors)
            self.layers.append(DecoderLayer(_layer_weights(w, c, il, required), c.n_head, c.n_head_kv, c.head_dim,
                                            ropes.get(key), c.scale, c.layer_window(il), c.activation,
                                            c.parallel_residual, alibi, c.clamp_kqv))
        self.gpu = None
        if n_gpu_layers:
            from .gpu import offload_layers
            self.gpu = offload_layers(self, n_gpu_layers, main_gpu)  # None: -1 without a GPU (a warning)
        if self.gpu is not None:
            self.layers = self.layers[:self.gpu.placement.first]  # the CPU's share
        # a prompt batch this long runs sgemm in some layer matrix (float math): the head follows (batch_output)
        self.sgemm_tokens = min((m.sgemm_tokens for layer in self.layers for m in matrices(layer.w)),
                                default=self.output.sgemm_tokens)
        self._buffers = {}  # n_tokens -> Buffers (one-token decode and the latest batch size)

    def _buffers_for(self, n: int) -> Buffers:
        b = self._buffers.get(n)
        if b is None:
            c = self.config
            self._buffers = {k: v for k, v in self._buffers.items() if k == 1}
            b = self._buffers[n] = Buffers(n, c.n_embd, c.n_head * c.head_dim, c.n_head_kv * c.head_dim, c.n_ff)
        return b

    def new_cache(self, n_ctx: int | None = None) -> KVCache:
        """A zeroed KV cache for n_ctx positions (default: the model's), refused before it is allocated when the memory
        available now cannot hold it."""
        self._check_open()
        c, n = self.config, self.n_ctx if n_ctx is None else n_ctx
        if not 0 < n <= self.n_ctx:
            raise ContextOverflowError(f"a KV cache of {n} positions: the model was loaded for 1..{self.n_ctx}")
        _check_memory(c, n, self.type_k, self.type_v, tables=False)
        cache = KVCache(len(self.layers), c.n_head_kv, n, c.head_dim, self.type_k, self.type_v)  # the CPU's layers
        if self.gpu is not None:
            cache.device = self.gpu.new_cache(n)
        return cache

    def close(self) -> None:
        """Drop the weights (views of the file's map) and unmap the file; forward() raises LlambaError afterwards."""
        self.closed = True
        self.embed = self.tok_embd = self.output = self.batch_output = self.output_norm = self.output_bias = None
        self.layers, self._buffers, self.gpu = [], {}, None
        self.gguf.close()

    def _check_open(self) -> None:
        if self.closed:
            raise LlambaError(f"{self.gguf.path}: this model was closed")

    def _check(self, tokens, pos, cache: KVCache) -> np.ndarray:
        self._check_open()
        tokens = np.asarray(tokens)
        if tokens.ndim != 1 or tokens.size == 0 or not np.issubdtype(tokens.dtype, np.integer):
            raise LlambaError(f"tokens must be a non-empty 1-D integer array, got {tokens.dtype} {tokens.shape}")
        if tokens.min() < 0 or tokens.max() >= self.n_vocab:
            raise LlambaError(f"token ids must lie in 0..{self.n_vocab - 1}, got {tokens.min()}..{tokens.max()}")
        if not isinstance(pos, (int, np.integer)) or pos < 0:
            raise LlambaError(f"pos must be a non-negative integer, got {pos!r}")
        if pos + tokens.size > cache.n_ctx:
            raise ContextOverflowError(
                f"{tokens.size} tokens at position {pos} need {pos + tokens.size} positions but the context holds "
                f"{cache.n_ctx} (load_model(n_ctx=...) allows up to {self.config.context_length})")
        return tokens

    def forward(self, tokens, pos: int, cache: KVCache, all_logits: bool = False, hidden: bool = False) -> np.ndarray:
        """Logits (n_vocab,) float32 of the last token, or (n, n_vocab) of every token if all_logits; with hidden,
        the final hidden states (n, n_embd) of every token after the output norm (what embeddings pool), no head.
        Writes the tokens' K/V at positions pos.. of `cache` (from new_cache()) and attends over its 0..pos-1."""
        return on_kernel_thread(self._forward, self._check(tokens, pos, cache), pos, cache, all_logits, hidden)

    def _forward(self, tokens, pos, cache, all_logits, hidden) -> np.ndarray:
        with np.errstate(all="ignore"):  # overflow shows as non-finite logits, reported by _head
            return self._layers(tokens, pos, cache, all_logits, hidden)

    def _layers(self, tokens, pos, cache, all_logits, hidden) -> np.ndarray:
        n, every = tokens.size, all_logits or hidden
        out = np.empty((n if every else 1, self.config.n_embd if hidden else self.n_vocab), np.float32)
        for i in range(0, n, UBATCH):
            chunk = tokens[i:i + UBATCH]
            blas_threads(numba.get_num_threads() if chunk.size >= self.sgemm_tokens else 1)  # sgemm, or attention
            b = self._buffers_for(chunk.size)
            self.embed(chunk, pos + i, b.x)  # (m, n_embd)
            for il, layer in enumerate(self.layers):
                layer(b, pos + i, cache.k[il], cache.v[il])
            if self.gpu is not None:  # the offloaded layers; b.x comes back unless only the GPU's head reads it
                self.gpu.forward(b.x, [(0, chunk.size, pos + i, cache.device)], fetch=hidden)
            if hidden:
                self.output_norm(b.x, out[i:i + chunk.size])
            elif all_logits:
                self._head(b.x, b.h, out[i:i + chunk.size])
        if not every:  # a batch's last position takes the head on the path its layers ran (sgemm: float)
            self._head(b.x[-1:], b.h[:1], out, self.batch_output if chunk.size >= self.sgemm_tokens else None)
        return out if every else out[0]

    def forward_batch(self, tokens, positions, caches) -> np.ndarray:
        """Logits (m, n_vocab) of one decode step of m sequences: token i at positions[i] of caches[i] (continuous
        batching). The weights are read once for all of them; each row is computed exactly as forward() computes
        one token alone, as long as m < sgemm_tokens (the scheduler splits larger batches)."""
        tokens = np.asarray(tokens, np.int32)
        if not 0 < tokens.size < self.sgemm_tokens or len(positions) != tokens.size or len(caches) != tokens.size:
            raise LlambaError(f"forward_batch takes 1..{self.sgemm_tokens - 1} tokens, one position and cache each")
        for t, p, cache in zip(tokens, positions, caches, strict=True):
            self._check(t[None], p, cache)
        return on_kernel_thread(self._step, tokens, positions, caches)

    def _step(self, tokens, positions, caches) -> np.ndarray:
        blas_threads(1)
        b = self._buffers_for(tokens.size)
        logits = np.empty((tokens.size, self.n_vocab), np.float32)
        with np.errstate(all="ignore"):
            self.embed(tokens, np.asarray(positions), b.x)  # (m, n_embd)
            for il, layer in enumerate(self.layers):
                layer.run(b, [(i, 1, p, c.k[il], c.v[il]) for i, (p, c) in enumerate(zip(positions, caches,
                                                                                           strict=True))])
            if self.gpu is not None:
                self.gpu.forward(b.x, [(i, 1, p, c.device) for i, (p, c) in enumerate(zip(positions, caches,
                                                                                          strict=True))])
            self._head(b.x, b.h, logits)
        return logits

    def _head(self, x: np.ndarray, tmp: np.ndarray, out: np.ndarray, head: QMatrix | None = None) -> None:
        # x (m, n_embd) final hidden states -> out (m, n_vocab) logits
        if self.gpu is not None and self.gpu.head is not None:
            self.gpu.logits(out)  # of the last m positions, from the device
        else:
            linear(head or self.output, self.output_norm(x, tmp), out, self.output_bias)
            cap = self.config.final_logit_softcap
            if cap:
                out /= cap
                np.tanh(out, out=out)
                out *= cap
        if self.check_finite and not np.isfinite(out.max()):  # NaN propagates through max: one reduction per call
            raise NumericsError(f"{self.gguf.path}: the model produced NaN or infinite logits; "
                                + nonfinite_tensors(self.gguf))


    def repack(self) -> None:
        """Interleave the CPU's matrices now (quant.interleave; load_model's repack), which their first product would
        do otherwise: LLM and `llamba bench` call it after the warm-up, before the first request. On the kernel
        thread: the copy is a parallel loop, and a second OpenMP team (the caller's) costs every later decoding step
        (SmolLM2: 16 against 8-11 ms)."""
        head = () if self.gpu is not None and self.gpu.head is not None else (self.output,)
        mats = [m for m in (*head, *(m for layer in self.layers for m in matrices(layer.w)))
                if m is not None and m.path == "int"]
        on_kernel_thread(lambda: [m.blocks for m in mats])

    def warmup(self, progress=None) -> int:
        """Compile (or load) every kernel this model runs, before the first token: see runtime/warmup.py."""
        from .warmup import warmup

        def run():
            return warmup(self, progress) + (self.gpu.warmup(self.n_ctx) if self.gpu is not None else 0)

        return on_kernel_thread(run)


def nonfinite_tensors(gguf: GGUFFile) -> str:
    """Which of the file's tensors hold NaN or infinite values (their float values or block scales), in words."""
    bad = [(name, n) for name, t in gguf.tensors.items() if (n := blocks.count_nonfinite(t.raw, t.qtype))]
    if not bad:
        return "every tensor is finite, so an activation overflowed (a wrongly converted or unsuitable file?)"
    listed = ", ".join(f"{name} ({n} non-finite)" for name, n in bad[:3])
    return f"tensors holding NaN or infinity: {listed}{' and more' if len(bad) > 3 else ''} (a damaged file?)"


def load_model(src, n_ctx: int | None = None, n_gpu_layers: int = 0, main_gpu: int = 0, type_k: str = "f16",
               type_v: str = "f16", repack: bool = True) -> Model:
    """Model from a GGUF path or an open GGUFFile; n_ctx defaults to min(context_length, 4096); n_gpu_layers,
    main_gpu: GPU offload (runtime/gpu; 0 layers: CPU only); type_k, type_v: the KV cache's element types (Model);
    repack: interleave the CPU's matrices that have 16-row kernels (quant.interleave: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0,
    Q4_K, Q6_K) into memory on first use or Model.repack(), as llama.cpp repacks at load (False: every matrix stays
    memory-mapped, llama.cpp's --no-repack)."""
    gguf = src if isinstance(src, GGUFFile) else GGUFFile(os.fspath(src))
    config = archs.get(gguf.architecture).Config.from_metadata(gguf.metadata)
    if n_ctx is None:
        n_ctx = min(config.context_length, DEFAULT_MAX_CTX)
    if not isinstance(n_ctx, (int, np.integer)) or isinstance(n_ctx, bool) or n_ctx <= 0:
        raise LlambaError(f"n_ctx must be a positive integer, got {n_ctx!r}")
    if n_ctx > config.context_length:
        raise ContextOverflowError(f"n_ctx {n_ctx} exceeds the {config.context_length} positions {config.arch} was "
                                   f"trained for ({config.arch}.context_length); use at most that")
    _check_memory(config, int(n_ctx), type_k, type_v)
    return Model(gguf, config, int(n_ctx), n_gpu_layers, main_gpu, type_k, type_v, repack)


def _check_memory(config, n_ctx: int, type_k: str, type_v: str, tables: bool = True) -> None:
    """Refuse a context whose KV cache (K and V of every layer) and, with tables, RoPE tables would not fit
    in the memory available now, before allocating them (Linux: /proc/meminfo's MemAvailable; elsewhere unchecked).
    load_model checks the tables and one cache (a model is of no use without one); Model.new_cache each cache."""
    c = config
    size = sum(CACHE_BYTES[kind] for kind in cache_types(type_k, type_v, c.head_dim))  # bytes of a K and a V value
    need = int(size * c.n_layer * c.n_head_kv * n_ctx * c.head_dim) + (3 * 8 * n_ctx * c.n_rot // 2 if tables else 0)
    try:
        with open("/proc/meminfo") as f:
            avail = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError, IndexError):
        return
    if need > avail:
        raise LlambaError(f"a context of {n_ctx} tokens needs {need / 2**30:.1f} GiB for its KV cache, "
                          f"{avail / 2**30:.1f} GiB of memory is available: use a smaller -c / n_ctx")
