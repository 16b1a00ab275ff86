"""Warm-up: run every kernel a model's forward pass and generation use, on scratch state, before the first token.

A cold kernel cache compiles here (with one progress display) instead of in the middle of a generation; a warm one
loads the kernels it would load anyway. For each kind of weight matrix (type, kernel path): its matrix-vector,
grouped, small-batch and large-batch (sgemm tile) products and a row lookup; then, for each distinct kind of layer,
a one-token decode, a small and a large batch, last-token and all-token logits, on a one-layer shallow copy of the
model over a small KV cache of its own (no conversation's cache nor the model's buffers are touched).

After a warm-up completes, a marker file in quant's kernel cache (keyed on the model's kinds of matrices and
layers, quant's and runtime's sources, numba and the CPU) lets the next one be skipped: a full pass over cached
kernels still costs ~0.5-0.8 s of thread start-up. quant.jit.stamp deletes markers with the kernels.
"""

import copy
import hashlib
import inspect
from pathlib import Path

import numpy as np

from quant import QMatrix
from quant.jit import cache as jit_cache
from quant.jit import stamp
from quant.matrix import MatrixGroup

from .kvcache import KVCache
from .layers import ATT_PARALLEL, RoPE, attention, matrices
from .model import UBATCH

ROWS = 64  # rows of each weight kind (and of the output head) multiplied in the warm-up


def warmup(model, progress=None) -> int:
    """Run every kernel `model` uses (see the module docstring). `progress(done, total)`: called (steps done, steps
    in all) at the first kernel compilation, then after each step; never when every kernel comes from the cache.
    Returns the number of kernel compilations."""
    marker = _marker(model)
    if marker is not None and marker.exists():
        return 0  # this model's kernels were all compiled and cached for these sources, numba and CPU
    steps = _steps(model)
    done, shown, start = 0, False, jit_cache.compiles()

    def on_compile():
        nonlocal shown
        if progress is not None and not shown:
            shown = True
            progress(done, len(steps))

    with jit_cache.watch_compiles(on_compile), np.errstate(all="ignore"):  # values are irrelevant here
        for step in steps:
            step()
            done += 1
            if shown:
                progress(done, len(steps))
    if marker is not None:
        try:
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text("")
        except OSError:
            pass  # a read-only cache: warm up every time
    return jit_cache.compiles() - start


def _model_matrices(model):
    """Every QMatrix the model multiplies or looks rows up in."""
    yield from (model.tok_embd, model.output, model.batch_output, model.embed.pos)
    for layer in model.layers:
        yield from matrices(layer.w)


def _marker(model):
    """The marker file of a completed warm-up of a model with this model's kinds of matrices and layers, for the
    same quant and runtime sources, numba and CPU (so every kernel it needs is cached); None when there is no
    cache."""
    import llvmlite.binding as llvm
    import numba

    import quant

    if numba.config.DISABLE_JIT:
        return None
    try:
        d = stamp.cache_dir(Path(quant.__file__).parent)
        h = hashlib.sha256((d / stamp.STAMP).read_bytes())  # quant's sources, as the kernels were built
        runtime_dir = Path(__file__).parent
        for f in sorted(runtime_dir.rglob("*.py")):  # runtime's own kernels (layers.py, ...)
            h.update(f.relative_to(runtime_dir).as_posix().encode() + b"\0" + f.read_bytes())
    except OSError:
        return None
    kinds = sorted({repr((int(m.qtype), m.path, m.interleave)) for m in _model_matrices(model) if m is not None})
    layers = sorted({repr(_kind(layer)) for layer in model.layers})
    h.update(repr((kinds, layers, repr(_kind(model.embed)), model.output_bias is None,
                   numba.__version__, llvm.get_host_cpu_name(), llvm.get_host_cpu_features().flatten())).encode())
    return d / f"warm-{h.hexdigest()[:24]}{stamp.WARM_SUFFIX}"


def _steps(model) -> list:
    """Callables, cheapest first, that together run every kernel of the forward pass."""
    small, large = 2, max(min(model.sgemm_tokens, UBATCH), 3)  # a batch on each side of the sgemm switch, if any
    rng = np.random.default_rng(0)
    steps = []
    kinds = {}  # (type, path) -> a few rows of one matrix of that kind
    for m in _model_matrices(model):
        if m is not None and (m.qtype, m.path) not in kinds:
            kinds[m.qtype, m.path] = QMatrix(m.raw[:ROWS], m.qtype, m.n_cols, m.path, m.interleave)
    for w in kinds.values():
        x = rng.standard_normal((large, w.n_cols)).astype(np.float32)  # (large, n_cols)
        y = np.empty((large, w.n_rows), np.float32)  # (large, n_rows)
        outs = [np.empty((large, w.n_rows), np.float32) for _ in range(3)]
        steps += [lambda w=w, x=x, y=y: w.matvec(x[0], out=y[0]),
                  lambda w=w, x=x, outs=outs: MatrixGroup((w, w))(x[:1], [y[:1] for y in outs[:2]]),  # up + gate
                  lambda w=w, x=x, outs=outs: MatrixGroup((w, w, w))(x[:small], [y[:small] for y in outs]),  # QKV
                  lambda w=w, x=x, y=y: w.matmul(x[:small], out=y[:small]),
                  lambda w=w, x=x, y=y: w.matmul(x, out=y),
                  lambda w=w: w.get_rows(np.arange(min(2, w.n_rows), dtype=np.int32))]
    layers = {}  # one layer of each kind
    for layer in model.layers:
        layers.setdefault(_kind(layer), layer)
    ids = np.arange(large, dtype=np.int32) % min(model.n_vocab, ROWS)
    for layer in layers.values():
        m = _scratch(model, layer)
        kv = KVCache(1, model.config.n_head_kv, 1 + 2 * small + 2 * large, model.config.head_dim, model.type_k,
                     model.type_v)
        steps += [lambda m=m, kv=kv: m.forward(ids[:1], 0, kv),  # decode
                  lambda m=m, kv=kv: m.forward(ids[:small], 1, kv),  # a short prompt
                  lambda m=m, kv=kv: m.forward(ids, 1 + small, kv),  # a long prompt, its last token (the batch head)
                  lambda m=m, kv=kv: m.forward(ids, 1 + small + large, kv, all_logits=True),  # all logits
                  lambda m=m, kv=kv: m.forward(ids[:small], 1 + small + 2 * large, kv, all_logits=True)]
    c = model.config  # decode attention over enough keys to run its parallel kernel
    n_keys = -(-ATT_PARALLEL // (c.n_head * c.head_dim)) + 1
    kv = KVCache(1, c.n_head_kv, n_keys, c.head_dim, model.type_k, model.type_v)  # the cache's element types
    k, v = kv.k[0], kv.v[0]
    q = rng.standard_normal((1, c.n_head, c.head_dim)).astype(np.float32)
    att = np.empty((1, c.n_head * c.head_dim), np.float32)
    steps.append(lambda: attention(q, k, v, n_keys - 1, 1.0, 0, att))
    return steps


def _scratch(model, layer):
    """A shallow copy of model running only `layer` (over a one-layer KV cache) with output heads of ROWS rows (the
    same kinds of arrays as the real ones, so the same compiled kernels)."""
    m = copy.copy(model)
    rows = min(model.n_vocab, ROWS)
    m.layers, m.n_vocab, m._buffers, m.gpu = [layer], rows, {}, None
    m.check_finite = False  # one layer out of its stack, fed arbitrary tokens: its logits need not be finite
    m.output, m.batch_output = (QMatrix(h.raw[:rows], h.qtype, h.n_cols, h.path, h.interleave)
                                for h in (model.output, model.batch_output))
    m.output_bias = None if model.output_bias is None else model.output_bias[:rows]
    return m


def _kind(obj, depth: int = 0):
    """What decides which compiled kernels a layer runs: types and kernel paths of its matrices, which optional
    tensors it has, array kinds and flags; not sizes or values (RoPE tables and norms' eps are left out)."""
    if isinstance(obj, QMatrix):
        return ("QMatrix", int(obj.qtype), obj.path, obj.interleave)
    if isinstance(obj, np.ndarray):
        return ("array", obj.dtype.str, obj.ndim, obj.flags.writeable)
    if isinstance(obj, (list, tuple)):
        return tuple(sorted({repr(_kind(v, depth + 1)) for v in obj}))
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, (int, float)):
        return type(obj).__name__ if depth else bool(obj)  # a layer's window, clamp: on or off
    if inspect.isroutine(obj):  # an activation function
        return obj.__name__
    if hasattr(obj, "__dict__") and depth < 3:
        return (type(obj).__name__, tuple((k, _kind(v, depth + 1)) for k, v in sorted(vars(obj).items())
                                         if not isinstance(v, RoPE)))
    return type(obj).__name__
