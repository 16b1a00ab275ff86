"""Shared transformer blocks: norms, RoPE, attention over a KV cache, MLPs, and a generic decoder layer.

Activations are float32 arrays of shape (n_tokens, features). Weight matrices are quant.QMatrix
(kernels over the raw GGML blocks); norm weights and biases are float32 vectors (views of the map).
"""

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from numba import njit, prange

from quant import QMatrix
from quant.fp16 import bits_as_f32, widen
from quant.matrix import MatrixGroup

from .kvcache import chunk, converted, kernel_view, store

if TYPE_CHECKING:  # archs build their models from these blocks, not the reverse
    from .archs.base import RopeScaling

# ---- norms -------------------------------------------------------------------------------------

@njit(cache=True, nogil=True)
def _rms_norm_rows(x, w, eps, out):
    # x (m, d) float32 -> out (m, d) = x / sqrt(mean(x^2) + eps) * w; out may be x
    m, d = x.shape
    for r in range(m):
        ss = 0.0
        for i in range(d):  # hot loop
            ss += x[r, i] * x[r, i]
        inv = np.float32(1.0 / np.sqrt(ss / d + eps))
        for i in range(d):
            out[r, i] = x[r, i] * inv * w[i]


def rms_norm(x: np.ndarray, w: np.ndarray, eps: float, out: np.ndarray) -> np.ndarray:
    # x (..., d) contiguous -> out (..., d)
    d = x.shape[-1]
    _rms_norm_rows(x.reshape(-1, d), w, eps, out.reshape(-1, d))
    return out


def layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, eps: float, out: np.ndarray) -> np.ndarray:
    # x (..., d) -> out (..., d) = (x - mean) / sqrt(var + eps) * w + b
    np.subtract(x, x.mean(axis=-1, keepdims=True), out=out)
    rms_norm(out, w, eps, out)
    if b is not None:
        out += b
    return out


@dataclass
class Norm:
    """RMSNorm (bias None, rms=True) or LayerNorm over the last axis."""
    weight: np.ndarray  # (d,) float32
    bias: np.ndarray | None
    eps: float
    rms: bool = True

    def __call__(self, x: np.ndarray, out: np.ndarray) -> np.ndarray:
        if self.rms:
            out = rms_norm(x, self.weight, self.eps, out)
            if self.bias is not None:
                out += self.bias
            return out
        return layer_norm(x, self.weight, self.bias, self.eps, out)


# ---- rotary position embedding -----------------------------------------------------------------

def rope_frequencies(n_rot: int, base: float, scaling: "RopeScaling | None" = None,
                     freq_factors: np.ndarray | None = None) -> tuple:
    """Per-pair angular frequencies (n_rot/2,) float64 and the cos/sin magnitude, as llama.cpp's rope.

    freq_factors (llama3's `rope_freqs` tensor) divide the frequencies; 'linear' scaling divides them
    by factor; 'yarn' blends interpolated and original frequencies over a ramp of dimensions."""
    i = np.arange(n_rot // 2, dtype=np.float64)
    freqs = base ** (-2.0 * i / n_rot)  # (n_rot/2,)
    if freq_factors is not None:
        freqs = freqs / freq_factors
    if scaling is None:
        return freqs, 1.0
    interp = freqs / scaling.factor
    if scaling.kind == "linear":
        return interp, 1.0
    # yarn: dimensions rotating faster than beta_fast turns over the original context keep their
    # frequency, slower than beta_slow are interpolated, a linear ramp in between
    def corr_dim(n_turns):
        return n_rot * math.log(scaling.original_context / (n_turns * 2 * math.pi)) / (2 * math.log(base))
    low = max(0.0, math.floor(corr_dim(scaling.beta_fast)))
    high = min(n_rot - 1.0, math.ceil(corr_dim(scaling.beta_slow)))
    ramp = 1.0 - np.clip((i - low) / max(0.001, high - low), 0.0, 1.0)  # 1: keep original frequency
    mscale = scaling.attn_factor * (1.0 + 0.1 * math.log(scaling.factor))
    return interp * (1.0 - ramp) + freqs * ramp, mscale


class RoPE:
    """Rotary embedding of the first n_rot dims of each head, tables precomputed for n_ctx positions."""

    def __init__(self, n_rot: int, n_ctx: int, base: float, neox: bool, scaling: "RopeScaling | None" = None,
                 freq_factors: np.ndarray | None = None):
        freqs, mscale = rope_frequencies(n_rot, base, scaling, freq_factors)
        angles = np.outer(np.arange(n_ctx, dtype=np.float64), freqs)  # (n_ctx, n_rot/2)
        self.cos = (np.cos(angles) * mscale).astype(np.float32)
        self.sin = (np.sin(angles) * mscale).astype(np.float32)
        self.n_rot, self.neox = n_rot, neox

    def __call__(self, x: np.ndarray, pos: int) -> None:
        # x (n_tokens, n_heads, head_dim), rotated in place for positions pos..pos+n_tokens-1
        _rope(x, self.cos, self.sin, pos, self.n_rot, self.neox)


@njit(cache=True, nogil=True)
def _rope(x, cos, sin, pos, n_rot, neox):
    # x (n, n_heads, head_dim) float32 in place; cos, sin (n_ctx, n_rot/2)
    half = n_rot // 2
    stride, step = (1, half) if neox else (2, 1)  # pair i is (stride*i, stride*i + step)
    for t in range(x.shape[0]):
        c, s = cos[pos + t], sin[pos + t]
        for h in range(x.shape[1]):
            for i in range(half):  # hot loop
                i0 = stride * i
                a, b = x[t, h, i0], x[t, h, i0 + step]
                x[t, h, i0] = a * c[i] - b * s[i]
                x[t, h, i0 + step] = a * s[i] + b * c[i]


# ---- attention ---------------------------------------------------------------------------------

def alibi_slopes(n_head: int, max_bias: float) -> np.ndarray:
    """ALiBi's per-head slopes (n_head,) float32 as llama.cpp (and transformers' MPT/BLOOM) compute them:
    a geometric series over the largest power of two <= n_head, the remaining heads interleaved between."""
    n_log2 = 2 ** math.floor(math.log2(n_head))
    m0, m1 = 2.0 ** (-max_bias / n_log2), 2.0 ** (-max_bias / 2.0 / n_log2)
    h = np.arange(n_head)
    return np.where(h < n_log2, m0 ** (h + 1), m1 ** (2 * (h - n_log2) + 1)).astype(np.float32)


def attention(q: np.ndarray, k_cache: np.ndarray, v_cache: np.ndarray, pos: int, scale: float, window: int,
              out: np.ndarray, slopes: np.ndarray | None = None) -> np.ndarray:
    """Causal (optionally sliding-window) grouped-query attention of n new queries over the cache.

    q (n, n_head, head_dim) for positions pos..pos+n-1; k_cache, v_cache (n_head_kv, n_ctx, head_dim)
    hold keys/values of positions 0..pos+n-1; out (n, n_head * head_dim). Query head h reads kv head
    h // (n_head / n_head_kv). window > 0: a query at p sees keys at p-window+1..p.
    slopes (n_head,): ALiBi, head h's score of a key at distance d behind the query gets -slopes[h] * d."""
    n, n_head, hd = q.shape
    n_kv = k_cache.shape[0]
    rep = n_head // n_kv
    end = pos + n
    start = max(0, pos - window + 1) if window else 0
    if n == 1:  # decoding: one fused kernel instead of a dozen array operations
        _attend_one(q[0], kernel_view(k_cache), kernel_view(v_cache), start, end, scale,
                    _NO_SLOPES if slopes is None else slopes, out[0])
        return out
    keys = converted(k_cache[:, start:end], np.float32, hd)  # (n_kv, T, hd); an f32 cache's view, not a copy
    vals = converted(v_cache[:, start:end], np.float32, hd)
    qg = q.reshape(n, n_kv, rep, hd).transpose(1, 0, 2, 3)  # (n_kv, n, rep, hd)
    o = out.reshape(n, n_kv, rep, hd)
    big = n * (end - start) * n_head * hd >= PROMPT_SPLIT
    rows = -(-n // PROMPT_TASKS) if big else n  # query rows per task
    tasks = [(i, min(n, i + rows)) for i in range(0, n, rows)]
    errors = np.geterr()  # the caller's NumPy error handling, in the pool's threads too

    def run(t):
        with np.errstate(**errors):
            _attend_rows(qg, keys, vals, pos, start, scale, window, slopes, o, *t)
    pool = _pool() if big else None
    for _ in (map if pool is None else pool.map)(run, tasks):
        pass
    return out


PROMPT_TASKS = 8  # row blocks of a long prompt's attention (each leaves out the keys after its last row), run on
PROMPT_SPLIT = 1 << 24  # the kernel threads' count of Python threads (numpy and BLAS release the GIL) when queries x
# keys x heads x head_dim reaches this. SmolLM2 / Qwen2.5-0.5B pp512, 2 threads: the attention 405 / 532 -> 276 / 261 ms
_POOL = [None, 0]  # the thread pool of prompt attention and its size


def _pool():
    """A pool of numba.get_num_threads() threads (None for one), kept while the count stays."""
    import concurrent.futures

    import numba

    n = numba.get_num_threads()
    if n < 2:
        return None
    if _POOL[1] != n:
        if _POOL[0] is not None:
            _POOL[0].shutdown()
        _POOL[:] = concurrent.futures.ThreadPoolExecutor(n, thread_name_prefix="llamba-attention"), n
    return _POOL[0]


def _attend_rows(qg, keys, vals, pos, start, scale, window, slopes, o, i0, i1):
    """Query rows i0..i1 of a prompt's attention (numpy and BLAS, which release the GIL): qg (n_kv, n, rep, hd),
    keys and vals (n_kv, T, hd) for positions start.., o (n, n_kv, rep, hd). Keys past the last row's position are
    left out, and before the first row's window."""
    n_kv, _, rep, hd = qg.shape
    k0 = max(start, pos + i0 - window + 1) if window else start
    k1 = pos + i1  # keys k0..k1-1 (positions)
    m = i1 - i0
    s = np.matmul(qg[:, i0:i1].reshape(n_kv, m * rep, hd), keys[:, k0 - start:k1 - start].transpose(0, 2, 1))
    s *= scale  # (n_kv, m * rep, T)
    qpos = np.arange(pos + i0, pos + i1)[:, None]  # (m, 1)
    kpos = np.arange(k0, k1)[None, :]  # (1, T)
    if slopes is not None:
        s.reshape(n_kv, m, rep, -1)[:] += (slopes.reshape(n_kv, 1, rep, 1)
                                           * (kpos - qpos).astype(np.float32)[None, :, None, :])
    hidden = kpos > qpos
    if window:
        hidden |= kpos <= qpos - window
    s.reshape(n_kv, m, rep, -1)[:] += np.where(hidden, np.float32(-np.inf), np.float32(0))[:, None, :]
    s -= s.max(axis=-1, keepdims=True)
    np.exp(s, out=s)
    s /= s.sum(axis=-1, keepdims=True)
    o[i0:i1] = np.matmul(s, vals[:, k0 - start:k1 - start]).reshape(n_kv, m, rep, hd).transpose(1, 0, 2, 3)


_NO_SLOPES = np.zeros(0, np.float32)


FAST = {"reassoc", "contract", "nsz", "arcp"}
ATT_CHUNK = 256  # keys per task of a decoding query: the tasks of every kv head and chunk run in parallel
ATT_PARALLEL = 1 << 19  # ... when keys x query heads x head_dim reaches this (measured: below it, waking the threads
# costs more than they save)
ATT_SUB = 32  # keys widened at a time (q8_0: dequantized into a small scratch; a whole 256-key chunk at once measured
# 9.0 against 4.6 ms an attention layer of the 7B shape at 4000 keys)


@njit(cache=True, nogil=True, fastmath=FAST)
def _attend_one(q, k_cache, v_cache, start, end, scale, slopes, out):
    # q (n_head, hd) at position end - 1 over keys/values start..end-1 of k_cache, v_cache (n_kv, n_ctx, hd);
    # slopes (n_head,) ALiBi or (0,); out (n_head * hd). Split by kv head and by ATT_CHUNK keys (flash-decoding):
    # each task reads its keys and values once for the query heads that share them; the chunks merge at the end.
    n_head, hd = q.shape
    n_kv = k_cache.shape[0]
    rep = n_head // n_kv
    n_chunks = (end - start + ATT_CHUNK - 1) // ATT_CHUNK
    top = np.empty((n_kv, n_chunks, rep), np.float32)  # per task and query head: its largest score,
    total = np.empty((n_kv, n_chunks, rep), np.float32)  # the sum of exp(score - top),
    o = np.empty((n_kv, n_chunks, rep, hd), np.float32)  # and the values weighted by exp(score - top)
    if (end - start) * n_head * hd >= ATT_PARALLEL:
        _attend_tasks(q, k_cache, v_cache, start, end, scale, slopes, top, total, o)
    else:  # too little work to pay for waking the other threads
        for task in range(n_kv * n_chunks):
            _attend_task(task, q, k_cache, v_cache, start, end, scale, slopes, top, total, o)
    for kv in range(n_kv):  # merge: chunk c weighs exp(top_c - the largest top)
        for r in range(rep):
            h = kv * rep + r
            m, norm = top[kv, :, r].max(), np.float32(0.0)
            out[h * hd:(h + 1) * hd] = 0.0
            for c in range(n_chunks):
                w = np.exp(top[kv, c, r] - m)
                norm += w * total[kv, c, r]
                for i in range(hd):
                    out[h * hd + i] += w * o[kv, c, r, i]
            out[h * hd:(h + 1) * hd] /= norm


@njit(cache=True, nogil=True, parallel=True)
def _attend_tasks(q, k_cache, v_cache, start, end, scale, slopes, top, total, o):
    # every task of _attend_one's split in parallel (nothing else here: numba would turn array expressions into
    # parallel regions of their own)
    for task in prange(top.shape[0] * top.shape[1]):
        _attend_task(task, q, k_cache, v_cache, start, end, scale, slopes, top, total, o)


@njit(cache=True, nogil=True, fastmath=FAST)
def _attend_task(task, q, k_cache, v_cache, start, end, scale, slopes, top, total, o):
    # task: kv head task // n_chunks, chunk task % n_chunks of _attend_one's split
    n_chunks, rep = top.shape[1], top.shape[2]
    kv, c = task // n_chunks, task % n_chunks
    t0 = start + c * ATT_CHUNK
    _attend_chunk(q[kv * rep:(kv + 1) * rep], k_cache[kv], v_cache[kv], t0, min(end, t0 + ATT_CHUNK), end, scale,
                  slopes[kv * rep:(kv + 1) * rep] if slopes.size else slopes, top[kv, c], total[kv, c], o[kv, c])


@njit(cache=True, nogil=True, inline="always", fastmath={"contract"})
def _exp(x):
    """exp(x) for x <= 0 in float32, within 2 units in the last place (Cephes' expf: x = n ln2 + r, |r| <= ln2 / 2,
    a degree-7 polynomial in r times 2^n), as branch-free arithmetic that vectorizes: numba's np.exp calls libm per
    element, 4x slower (the softmax over a long context's scores). Below -87 (exp < 1.7e-38) it gives exp(-87)."""
    x = max(x, np.float32(-87.0))
    n = np.floor(x * np.float32(1.44269504088896341) + np.float32(0.5))  # round(x / ln2)
    r = x - n * np.float32(0.693359375) + n * np.float32(2.12194440e-4)  # x - n ln2, ln2 in two parts
    p = np.float32(1.9875691500e-4)
    p = p * r + np.float32(1.3981999507e-3)
    p = p * r + np.float32(8.3334519073e-3)
    p = p * r + np.float32(4.1665795894e-2)
    p = p * r + np.float32(1.6666665459e-1)
    p = p * r + np.float32(5.0000001201e-1)
    p = p * r * r + r + np.float32(1.0)
    return p * bits_as_f32(np.uint32((np.int32(n) + np.int32(127)) * np.int32(1 << 23)))  # times 2^n


@njit(cache=True, nogil=True, fastmath=FAST)
def _attend_chunk(q, keys, vals, t0, t1, end, scale, slopes, top, total, o):
    # q (rep, hd) the query heads of one kv head over its keys, vals (n_ctx, ...) at t0..t1-1 (the query is at
    # end - 1); slopes (rep,) or (0,). Out: top, total (rep,) largest score and sum of exp(score - top), o (rep, hd)
    rep, hd = q.shape
    s = np.empty((rep, t1 - t0), np.float32)  # scores, then exp(score - top)
    for u in range(t0, t1, ATT_SUB):
        ks = chunk(keys, u, min(t1, u + ATT_SUB))  # (<= ATT_SUB, hd) float32 or f16 bits
        for t in range(ks.shape[0]):
            for r in range(rep):
                dot = np.float32(0.0)
                for i in range(hd):  # hot loop
                    dot += q[r, i] * widen(ks[t, i])
                bias = slopes[r] * np.float32(u + t - end + 1) if slopes.size else np.float32(0.0)
                s[r, u - t0 + t] = dot * scale + bias
    for r in range(rep):
        m, norm = s[r].max(), np.float32(0.0)
        for t in range(t1 - t0):  # hot loop
            e = _exp(s[r, t] - m)
            s[r, t] = e
            norm += e
        top[r], total[r] = m, norm
    o[:] = 0.0
    for u in range(t0, t1, ATT_SUB):
        vs = chunk(vals, u, min(t1, u + ATT_SUB))
        for t in range(vs.shape[0]):
            for r in range(rep):
                p = s[r, u - t0 + t]
                for i in range(hd):  # hot loop
                    o[r, i] += p * widen(vs[t, i])


# ---- feed-forward ------------------------------------------------------------------------------

def silu(x: np.ndarray) -> np.ndarray:  # in place: x * sigmoid(x)
    x /= 1.0 + np.exp(-x)
    return x


_GELU_C = math.sqrt(2.0 / math.pi)


def gelu_tanh(x: np.ndarray) -> np.ndarray:  # in place: tanh approximation of GELU
    t = x * x
    t *= 0.044715 * _GELU_C
    t += _GELU_C
    t *= x
    np.tanh(t, out=t)
    t += 1.0
    x *= 0.5
    x *= t
    return x


@njit(cache=True, nogil=True)
def _gelu_erf(x):
    # x (m,) float32 in place: exact GELU x * (1 + erf(x / sqrt(2))) / 2
    for i in range(x.size):  # hot loop
        x[i] = 0.5 * x[i] * (1.0 + math.erf(x[i] * 0.7071067811865476))


def gelu(x: np.ndarray) -> np.ndarray:  # in place: exact (erf) GELU; x contiguous
    _gelu_erf(x.reshape(-1))
    return x


def relu(x: np.ndarray) -> np.ndarray:  # in place
    np.maximum(x, 0, out=x)
    return x


ACTIVATIONS = {"silu": silu, "gelu_tanh": gelu_tanh, "gelu": gelu, "relu": relu}


def linear(w: QMatrix, x: np.ndarray, out: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
    # x (n, n_in) -> out (n, n_out) = x @ w.T + bias; one token takes the matrix-vector kernel
    if x.shape[0] == 1:
        w.matvec(x[0], out=out[0])
    else:
        w.matmul(x, out=out)
    if bias is not None:
        out += bias
    return out


def linear_many(x: np.ndarray, group: MatrixGroup, outs: tuple, biases: tuple) -> tuple:
    """linear(w, x, out, bias) for the matrices of `group` (sharing the input x): one kernel call for all of them."""
    group(x, outs)
    for out, bias in zip(outs, biases, strict=True):
        if bias is not None:
            out += bias
    return outs


def mlp(h: np.ndarray, w_up: QMatrix, w_down: QMatrix, w_gate: QMatrix | None, act, up: np.ndarray,
        gate: np.ndarray, out: np.ndarray, b_up: np.ndarray | None = None,
        b_down: np.ndarray | None = None, up_gate: MatrixGroup | None = None) -> np.ndarray:
    """h (n, n_embd) -> out (n, n_embd) = down(act(gate(h)) * up(h)), or down(act(up(h))) without a gate.
    up, gate: (n, n_ff) scratch; up_gate: the group (w_up, w_gate), if the caller keeps one."""
    if w_gate is None:
        u = act(linear(w_up, h, up, b_up))
    else:
        u, g = linear_many(h, up_gate or MatrixGroup((w_up, w_gate)), (up, gate), (b_up, None))
        u *= act(g)
    return linear(w_down, u, out, b_down)


@dataclass
class MoE:
    """Top-k routed mixture of gated experts (Mixtral): softmax over the router logits, the k most probable
    experts, their probabilities renormalized to sum 1, a weighted sum of those experts' outputs.

    Experts are per-expert QMatrix views (slices of the stacked map): only the routed experts' bytes are read.
    A batch is grouped by expert, each expert multiplying the rows of the tokens routed to it."""
    router: QMatrix  # (n_expert, n_embd)
    gate: list  # n_expert QMatrix (n_ff, n_embd)
    up: list  # n_expert QMatrix (n_ff, n_embd)
    down: list  # n_expert QMatrix (n_embd, n_ff)
    n_used: int

    def route(self, h: np.ndarray) -> tuple:
        """h (n, n_embd) -> (experts (n, k) int, weights (n, k) float32), most probable first."""
        logits = linear(self.router, h, np.empty((h.shape[0], self.router.n_rows), np.float32))  # (n, n_expert)
        logits -= logits.max(axis=1, keepdims=True)
        probs = np.exp(logits)  # softmax's denominator cancels in the renormalization
        experts = np.argsort(-probs, axis=1, kind="stable")[:, :self.n_used]  # (n, k)
        weights = np.take_along_axis(probs, experts, axis=1)
        weights /= weights.sum(axis=1, keepdims=True)
        return experts, weights

    def __call__(self, h: np.ndarray, act, up: np.ndarray, gate: np.ndarray, out: np.ndarray) -> np.ndarray:
        # h (n, n_embd) -> out (n, n_embd); up, gate (n, n_ff) scratch
        experts, weights = self.route(h)
        out[:] = 0
        for e in np.unique(experts):
            rows, slot = np.nonzero(experts == e)  # tokens routed to e (each at most once)
            m = rows.size
            y = mlp(h[rows], self.up[e], self.down[e], self.gate[e], act, up[:m], gate[:m],
                    np.empty((m, out.shape[1]), np.float32))  # (m, n_embd)
            y *= weights[rows, slot][:, None]
            out[rows] += y
        return out


# ---- embedding ---------------------------------------------------------------------------------

@dataclass
class Embedding:
    """Token embedding rows, plus what some architectures add: learned absolute positions (gpt2, opt), a scale
    (gemma3), a norm (bloom). x = norm((tok[t] + pos[p]) * scale)."""
    tok: QMatrix  # (n_vocab, n_embd)
    scale: float = 1.0
    pos: QMatrix | None = None  # (n_pos, n_embd)
    norm: Norm | None = None

    def __call__(self, tokens: np.ndarray, pos, out: np.ndarray) -> np.ndarray:
        # tokens (m,) at positions pos..pos+m-1 (or at positions pos (m,), a batch of sequences) -> out (m, n_embd)
        out[:] = self.tok.get_rows(tokens)
        if self.pos is not None:
            out += self.pos.get_rows(np.arange(pos, pos + tokens.size) if np.isscalar(pos) else pos)
        if self.scale != 1.0:
            out *= np.float32(self.scale)
        if self.norm is not None:
            self.norm(out, out)
        return out


# ---- the decoder layer -------------------------------------------------------------------------

class Buffers:
    """Preallocated activations for a batch of n tokens."""

    def __init__(self, n: int, n_embd: int, n_q: int, n_kv: int, n_ff: int):
        f = np.float32
        self.n = n
        self.x, self.h, self.o = (np.empty((n, n_embd), f) for _ in range(3))  # (n, n_embd)
        self.q, self.att = np.empty((n, n_q), f), np.empty((n, n_q), f)  # (n, n_head * head_dim)
        self.k, self.v = np.empty((n, n_kv), f), np.empty((n, n_kv), f)  # (n, n_head_kv * head_dim)
        self.gate, self.up = np.empty((n, n_ff), f), np.empty((n, n_ff), f)  # (n, n_ff)


def matrices(obj):
    """The QMatrix objects inside a layer's weights (MoE experts included)."""
    if isinstance(obj, QMatrix):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from matrices(v)
    elif hasattr(obj, "__dict__") and not isinstance(obj, np.ndarray):
        for v in vars(obj).values():
            yield from matrices(v)


@dataclass
class LayerWeights:
    """One decoder layer; None marks an absent tensor (no bias, no extra norm)."""
    attn_norm: Norm
    wq: QMatrix
    wk: QMatrix
    wv: QMatrix
    wo: QMatrix
    ffn_norm: Norm | None  # None: a parallel block's MLP shares attn_norm's output
    w_up: QMatrix | None  # None in a mixture-of-experts layer
    w_down: QMatrix | None
    w_gate: QMatrix | None = None  # None: plain MLP act(up(x))
    moe: MoE | None = None  # replaces w_up, w_down, w_gate
    b_up: np.ndarray | None = None
    b_down: np.ndarray | None = None
    bq: np.ndarray | None = None
    bk: np.ndarray | None = None
    bv: np.ndarray | None = None
    bo: np.ndarray | None = None
    q_norm: Norm | None = None  # per head, before RoPE
    k_norm: Norm | None = None
    post_attn_norm: Norm | None = None  # on the attention output, before the residual add
    post_ffn_norm: Norm | None = None


class DecoderLayer:
    """Pre-norm block: x += [post_norm](attn(norm(x))); x += [post_norm](mlp(norm(x))).
    parallel (GPT-NeoX, Falcon): x += attn(attn_norm(x)) + mlp(ffn_norm(x)), both norms of the block input.
    rope None: no rotary embedding (positions come from learned position embeddings or ALiBi slopes)."""

    def __init__(self, w: LayerWeights, n_head: int, n_head_kv: int, head_dim: int, rope: RoPE | None, scale: float,
                 window: int, activation: str, parallel: bool = False, alibi: np.ndarray | None = None,
                 clamp: float = 0.0):
        self.w, self.rope, self.scale, self.window, self.parallel = w, rope, scale, window, parallel
        self.alibi, self.clamp = alibi, clamp  # (n_head,) ALiBi slopes or None; > 0: Q/K/V clipped to +-clamp
        self.n_head, self.n_head_kv, self.head_dim = n_head, n_head_kv, head_dim
        self.act = ACTIVATIONS[activation]
        self.qkv = MatrixGroup((w.wq, w.wk, w.wv))
        self.up_gate = None if w.w_gate is None else MatrixGroup((w.w_up, w.w_gate))

    def __call__(self, b: Buffers, pos: int, k_cache: np.ndarray, v_cache: np.ndarray) -> None:
        # b.x (n, n_embd) updated in place: one sequence's tokens at positions pos..pos+n-1; k_cache, v_cache
        # (n_head_kv, n_ctx, head_dim) of this layer
        self.run(b, [(0, b.n, pos, k_cache, v_cache)])

    def run(self, b: Buffers, seqs: list) -> None:
        """The layer over a batch of sequences: seqs lists (first row, n rows, position of the first row, k_cache,
        v_cache) of each; the matrix products take all rows at once, RoPE and attention each sequence apart."""
        w, n, hd = self.w, b.n, self.head_dim
        h = w.attn_norm(b.x, b.h)
        q, k, v = linear_many(h, self.qkv, (b.q, b.k, b.v), (w.bq, w.bk, w.bv))
        q, k, v = q.reshape(n, self.n_head, hd), k.reshape(n, self.n_head_kv, hd), v.reshape(n, self.n_head_kv, hd)
        if self.clamp:
            for t in (q, k, v):
                np.clip(t, -self.clamp, self.clamp, out=t)
        if w.q_norm is not None:
            w.q_norm(q, q)
            w.k_norm(k, k)
        for r, m, pos, k_cache, v_cache in seqs:
            qs, ks = q[r:r + m], k[r:r + m]  # (m, n_head(_kv), head_dim) views
            if self.rope is not None:
                self.rope(qs, pos)
                self.rope(ks, pos)
            store(k_cache, pos, ks)
            store(v_cache, pos, v[r:r + m])
            attention(qs, k_cache, v_cache, pos, self.scale, self.window, b.att[r:r + m], self.alibi)
        y = linear(w.wo, b.att, b.o, w.bo)
        if self.parallel and w.ffn_norm is not None:  # None (falcon 7B): the MLP reads attn_norm's h too
            h = w.ffn_norm(b.x, b.h)  # of the block input, before the attention residual
        self._residual(y, w.post_attn_norm, b.x)

        if not self.parallel:
            h = w.ffn_norm(b.x, b.h)
        if w.moe is None:
            y = mlp(h, w.w_up, w.w_down, w.w_gate, self.act, b.up, b.gate, b.o, w.b_up, w.b_down, self.up_gate)
        else:
            y = w.moe(h, self.act, b.up, b.gate, b.o)
        self._residual(y, w.post_ffn_norm, b.x)

    @staticmethod
    def _residual(y: np.ndarray, post_norm: Norm | None, x: np.ndarray) -> None:
        if post_norm is not None:
            post_norm(y, y)
        x += y
