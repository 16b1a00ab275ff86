"""The GPU kernels (quant/kernels/cuda) against numpy references: matvec and tiled matmul for every weight type
against gguf.quants' dequantization, norms, RoPE with the f16 KV store, attention, activations, MoE routing.
They run on the GPU where there is one, else in numba-cuda's simulator (tests/cuda_env.py), with tiny shapes.

Tolerances: products are float32 sums in another order than numpy's float64 reference (relative 1e-5 of the
output's scale); the KV cache holds fp16, so attention is compared on keys and values rounded to fp16 as well.
"""

import cuda_env  # noqa: F401  (first: picks the GPU or the simulator)
import numpy as np
import pytest
from gguf import quants
from gguf.constants import GGMLQuantizationType

from quant import GGMLType, QMatrix, quantize
from quant.quads import QUADS
from runtime.layers import ACTIVATIONS, MoE, RoPE, alibi_slopes, attention, layer_norm, rms_norm

pytestmark = cuda_env.needs_cuda


@pytest.fixture(scope="module")
def cu():
    from numba import cuda

    from quant.kernels.cuda import target
    target.open_device(0)
    return cuda


def _dev(cu, a):
    return cu.to_device(np.ascontiguousarray(a))


def _none(cu, dtype=np.float32):
    return cu.to_device(np.zeros(0, dtype))


def _weights(rng, qtype, n_rows: int, n_cols: int) -> tuple:
    """(raw blocks (n_rows, row_bytes), their gguf.quants dequantization (n_rows, n_cols))."""
    raw = quantize(rng.standard_normal((n_rows, n_cols)).astype(np.float32), qtype)
    return raw, np.asarray(quants.dequantize(raw, GGMLQuantizationType(int(qtype))), np.float32)


def _close(got, ref, rtol=1e-5):
    np.testing.assert_allclose(got, ref, rtol=rtol, atol=rtol * np.abs(ref).max())


@pytest.mark.parametrize("qtype", list(QUADS), ids=lambda t: t.name)
def test_matvec(cu, rng, qtype):
    """Two tokens, bias, accumulate into columns 2.. of a wider output."""
    from quant.kernels.cuda.matvec import matvec
    raw, w = _weights(rng, qtype, 6, 256)
    x, b = rng.standard_normal((2, 256)).astype(np.float32), rng.standard_normal(6).astype(np.float32)
    y0 = rng.standard_normal((2, 9)).astype(np.float32)
    y = _dev(cu, y0)
    matvec(qtype, _dev(cu, raw), 6, _dev(cu, x), y, _dev(cu, b), True, col0=2)
    ref = y0.copy()
    ref[:, 2:8] += x @ w.T + b
    _close(y.copy_to_host(), ref)


@pytest.mark.parametrize("qtype,n_rows,n_tok,n_cols", [(t, 7, 5, 256) for t in QUADS] + [(GGMLType.Q8_0, 70, 33, 64)],
                         ids=[t.name for t in QUADS] + ["tiles"])
def test_matmul(cu, rng, qtype, n_rows, n_tok, n_cols):
    """One partial tile per type; then two token tiles by two row tiles, partial at both ends, bias, accumulate."""
    from quant.kernels.cuda.matmul import matmul
    raw, w = _weights(rng, qtype, n_rows, n_cols)
    x, b = rng.standard_normal((n_tok, n_cols)).astype(np.float32), rng.standard_normal(n_rows).astype(np.float32)
    y0 = rng.standard_normal((n_tok, n_rows + 1)).astype(np.float32)
    y = _dev(cu, y0)
    matmul(qtype, _dev(cu, raw), _dev(cu, x), y, _dev(cu, b), True, col0=1)
    ref = y0.copy()
    ref[:, 1:] += x @ w.T + b
    _close(y.copy_to_host(), ref)


def test_matvec_experts(cu, rng):
    """ids pick each output's expert from stacked matrices; x_div shares an input among a token's slots."""
    from quant.kernels.cuda.matvec import matvec
    raw, w = _weights(rng, GGMLType.Q8_0, 3 * 5, 64)  # 3 experts of 5 rows
    x = rng.standard_normal((2, 64)).astype(np.float32)
    ids = np.array([2, 0, 1, 2], np.int32)  # token 0: experts 2, 0; token 1: 1, 2
    y = cu.device_array((4, 5), np.float32)
    matvec(GGMLType.Q8_0, _dev(cu, raw), 5, _dev(cu, x), y, _none(cu), False, ids=_dev(cu, ids), x_div=2)
    ref = np.stack([w[5 * e:5 * e + 5] @ x[i // 2] for i, e in enumerate(ids)])
    _close(y.copy_to_host(), ref)


@pytest.mark.parametrize("rms", [True, False])
def test_norm(cu, rng, rms):
    from quant.kernels.cuda.norm import norm
    x = rng.standard_normal((3, 200)).astype(np.float32) + 0.5
    w, b = rng.standard_normal(200).astype(np.float32), rng.standard_normal(200).astype(np.float32)
    out = cu.device_array((3, 200), np.float32)
    norm(_dev(cu, x), _dev(cu, w), _dev(cu, b), 1e-5, rms, out)
    ref = (rms_norm(x, w, 1e-5, np.empty_like(x)) if rms else layer_norm(x, w, None, 1e-5, np.empty_like(x))) + b
    _close(out.copy_to_host(), ref)


def test_head_norm_accumulates(cu, rng):
    """Per-head groups of columns (Q/K norms), and a post-norm added to a residual."""
    from quant.kernels.cuda.norm import norm
    x = rng.standard_normal((2, 48)).astype(np.float32)
    w, r = rng.standard_normal(16).astype(np.float32), rng.standard_normal((2, 48)).astype(np.float32)
    out = _dev(cu, r)
    norm(_dev(cu, x), _dev(cu, w), _none(cu), 1e-6, True, out, col0=16, groups=2, accumulate=True)
    ref = r.copy()
    ref[:, 16:] += rms_norm(x[:, 16:].reshape(2, 2, 16), w, 1e-6, np.empty((2, 2, 16), np.float32)).reshape(2, 32)
    _close(out.copy_to_host(), ref)


@pytest.mark.parametrize("neox", [False, True])
def test_rope_and_kv_store(cu, rng, neox):
    """Q and K heads rotated as layers.RoPE (partial rotary: 12 of 16 dims); K and V stored as fp16, rounded as
    numpy rounds."""
    from quant.kernels.cuda.rope import rope
    n, n_head, n_kv, hd, pos = 3, 4, 2, 16, 5
    qkv = rng.standard_normal((n, (n_head + 2 * n_kv) * hd)).astype(np.float32)
    r = RoPE(12, 16, 10000.0, neox)
    kc, vc = cu.to_device(np.zeros((n_kv, 16, hd), np.uint16)), cu.to_device(np.zeros((n_kv, 16, hd), np.uint16))
    d = _dev(cu, qkv)
    rope(d, n_head, n_kv, hd, 12, neox, _dev(cu, r.cos), _dev(cu, r.sin), pos, kc, vc)
    ref = qkv.copy().reshape(n, -1, hd)
    r(ref[:, :n_head + n_kv], pos)
    _close(d.copy_to_host(), ref.reshape(n, -1))
    k = ref[:, n_head:n_head + n_kv].transpose(1, 0, 2).astype(np.float16)
    assert np.array_equal(kc.copy_to_host()[:, pos:pos + n], k.view(np.uint16))
    v = ref[:, n_head + n_kv:].transpose(1, 0, 2).astype(np.float16)
    assert np.array_equal(vc.copy_to_host()[:, pos:pos + n], v.view(np.uint16))


@pytest.mark.parametrize("window,alibi", [(0, False), (3, False), (0, True)])
def test_attention(cu, rng, window, alibi):
    """Three queries at positions 130..132 over 133 cached keys (two chunks of the online softmax), grouped
    heads; the reference reads the same fp16 keys and values."""
    from quant.kernels.cuda.attention import attention as attend
    n, n_head, n_kv, hd, pos, n_ctx = 3, 4, 2, 16, 130, 140
    q = rng.standard_normal((n, n_head, hd)).astype(np.float32)
    k, v = (rng.standard_normal((n_kv, n_ctx, hd)).astype(np.float16) for _ in range(2))
    slopes = alibi_slopes(n_head, 8.0) if alibi else None
    out = cu.device_array((n, n_head * hd), np.float32)
    attend(_dev(cu, q.reshape(n, -1)), n_head, n_kv, hd, _dev(cu, k.view(np.uint16)), _dev(cu, v.view(np.uint16)),
           pos, 0.25, window, _none(cu) if slopes is None else _dev(cu, slopes), out)
    ref = attention(q, k.astype(np.float32), v.astype(np.float32), pos, 0.25, window, np.empty((n, n_head * hd),
                    np.float32), slopes)
    _close(out.copy_to_host(), ref, 1e-4)


@pytest.mark.parametrize("activation", ["silu", "gelu_tanh", "gelu", "relu"])
@pytest.mark.parametrize("gated", [True, False])
def test_activation(cu, rng, activation, gated):
    from quant.kernels.cuda.elementwise import activate
    ug = rng.standard_normal((2, 2 * 10 if gated else 10)).astype(np.float32) * 3
    out = cu.device_array((2, 10), np.float32)
    activate(_dev(cu, ug), gated, activation, out)
    act = ACTIVATIONS[activation]
    ref = act(ug[:, 10:].copy()) * ug[:, :10] if gated else act(ug.copy())
    _close(out.copy_to_host(), ref, 1e-5)


def test_softcap_and_clamp(cu, rng):
    from quant.kernels.cuda.elementwise import clamp, softcap
    y = rng.standard_normal((2, 7)).astype(np.float32) * 40
    a, b = _dev(cu, y), _dev(cu, y)
    softcap(a, 30.0)
    clamp(b, 20.0)
    _close(a.copy_to_host(), 30 * np.tanh(y / 30))
    assert np.array_equal(b.copy_to_host(), np.clip(y, -20, 20))


def test_moe_route_and_combine(cu, rng):
    """Top-k as layers.MoE.route (ties to the lower expert), then the weighted sum into the residual."""
    from quant.kernels.cuda.moe import combine, route
    logits = rng.standard_normal((3, 6)).astype(np.float32)
    logits[2, 4] = logits[2, 1]  # a tie
    ids, weights = cu.device_array(6, np.int32), cu.device_array(6, np.float32)
    route(_dev(cu, logits), 2, ids, weights)
    identity = QMatrix(np.eye(6, dtype=np.float32).view(np.uint8), GGMLType.F32, 6)  # router logits = h
    experts, w = MoE(identity, [], [], [], 2).route(logits)
    assert np.array_equal(ids.copy_to_host().reshape(3, 2), experts)
    _close(weights.copy_to_host().reshape(3, 2), w)
    ys, x = rng.standard_normal((6, 5)).astype(np.float32), rng.standard_normal((3, 5)).astype(np.float32)
    dx = _dev(cu, x)
    combine(_dev(cu, ys), weights, 2, dx)
    _close(dx.copy_to_host(), x + (w[:, :, None] * ys.reshape(3, 2, 5)).sum(1))
