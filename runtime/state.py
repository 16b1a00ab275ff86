"""Snapshots of a conversation (LLM.save_state / load_state): its token ids and their K/V, in memory or in a file.

The facts are llama-cpp-python's LlamaState's (input ids, n_tokens and the context's state); logits are not kept,
since the next call recomputes its last prompt token anyway (Context.eval). A snapshot names the model it came from
(model_fingerprint) and its n_ctx; restoring it into another model or n_ctx, or from a damaged file, raises
LlambaError.

File format: an uncompressed numpy .npz (a zip whose members carry CRC-32s, so damage is detected when read) with
`header` (UTF-8 JSON: format, version, model, model_name, n_ctx), `tokens` (n,) int32, `k` and `v`
(n_layer, n_head_kv, n, head_dim) in the cache's element type (float16 or float32, or uint8 (..., head_dim / 32 * 34)
q8_0 blocks; a state restores into a cache of any type, converted).
"""

import hashlib
import json
import os
import zipfile
from dataclasses import dataclass

import numpy as np

from quant import GGMLType, row_bytes
from quant.blocks import QK

from .errors import LlambaError
from .kvcache import converted

FORMAT, VERSION = "llamba-state", 1


@dataclass(frozen=True, eq=False)
class SessionState:
    """A conversation's token ids and their K/V (see the module docstring)."""
    model: str  # model_fingerprint of the model that computed the K/V
    model_name: str  # its file's name, for messages
    n_ctx: int
    tokens: np.ndarray  # (n,) int32
    k: np.ndarray  # (n_layer, n_head_kv, n, head_dim) float16 or float32, or q8_0 blocks
    v: np.ndarray  # (n_layer, n_head_kv, n, head_dim) float16 or float32, or q8_0 blocks

    @property
    def n_tokens(self) -> int:
        return self.tokens.size

    def save(self, path: str | os.PathLike) -> None:
        header = {"format": FORMAT, "version": VERSION, "model": self.model, "model_name": self.model_name,
                  "n_ctx": self.n_ctx}
        with open(path, "wb") as f:  # a file object: np.savez would append .npz to a name
            np.savez(f, header=np.frombuffer(json.dumps(header).encode(), np.uint8), tokens=self.tokens, k=self.k,
                     v=self.v)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "SessionState":
        """The state saved at `path`; LlambaError when it is missing, not a state file, truncated or damaged."""
        try:
            z = np.load(path, allow_pickle=False)
            if not isinstance(z, np.lib.npyio.NpzFile):
                raise ValueError("a .npy array, not an .npz archive")
            with z:
                header = json.loads(z["header"].tobytes())
                arrays = {name: z[name] for name in ("tokens", "k", "v")}
        except FileNotFoundError:
            raise LlambaError(f"{path}: no such state file") from None
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
            raise LlambaError(f"{path}: not a llamba state file, or a truncated or damaged one ({e})") from None
        if not isinstance(header, dict) or header.get("format") != FORMAT or header.get("version") != VERSION:
            raise LlambaError(f"{path}: not a {FORMAT} file of version {VERSION}")
        try:
            return cls(str(header["model"]), str(header["model_name"]), int(header["n_ctx"]), **arrays)
        except (KeyError, TypeError, ValueError) as e:
            raise LlambaError(f"{path}: the state file's header is incomplete ({e})") from None


def model_fingerprint(model) -> str:
    """sha256 of what a model's K/V depend on: its config (shapes, RoPE), each tensor's name, type and shape, and
    the first KiB of each tensor's data (which tells apart fine-tunes of one layout)."""
    h = hashlib.sha256(repr(model.config).encode())
    for t in model.gguf.tensors.values():
        h.update(repr((t.name, int(t.qtype), t.shape)).encode())
        h.update(t.raw.reshape(-1)[:1024].tobytes())
    return h.hexdigest()


def capture(ctx, model_name: str) -> SessionState:
    """A copy of the context's tokens and the K/V of their positions."""
    ctx.check_open()
    n = len(ctx.tokens)
    k, v = ctx.cache.k[:, :, :n], ctx.cache.v[:, :, :n]  # the CPU's layers
    if ctx.model.gpu is not None:  # the offloaded layers' K/V, from the device
        gk, gv = ctx.model.gpu.read_cache(ctx.cache.device, n)
        k, v = np.concatenate([k, gk]), np.concatenate([v, gv])
    return SessionState(model_fingerprint(ctx.model), model_name, ctx.model.n_ctx, np.array(ctx.tokens, np.int32),
                        k.copy(), v.copy())


def restore(ctx, state: SessionState) -> None:
    """Put `state` into the context (its cache and tokens), after checking it belongs to this model and n_ctx."""
    ctx.check_open()
    m, c = ctx.model, ctx.model.config
    if state.model != model_fingerprint(m):
        raise LlambaError(f"this state was saved from another model ({state.model_name}), not "
                          f"{os.path.basename(m.gguf.path)}")
    if state.n_ctx != m.n_ctx:
        raise LlambaError(f"this state was saved with n_ctx={state.n_ctx}; this model runs n_ctx={m.n_ctx}")
    n = state.n_tokens
    shape = (c.n_layer, c.n_head_kv, n)
    last = {np.dtype(np.float16): c.head_dim, np.dtype(np.float32): c.head_dim}  # float values
    if c.head_dim % QK == 0:  # or q8_0 blocks
        last[np.dtype(np.uint8)] = row_bytes(GGMLType.Q8_0, c.head_dim)
    if (state.tokens.ndim != 1 or not np.issubdtype(state.tokens.dtype, np.integer) or n > m.n_ctx
            or any(a.dtype not in last or a.shape != shape + (last[a.dtype],) for a in (state.k, state.v))):
        raise LlambaError(f"the state's arrays do not fit this model: tokens {state.tokens.shape}, K {state.k.shape}, "
                          f"V {state.v.shape}; expected ({n},) and {shape + (c.head_dim,)} float16 or float32 (or "
                          f"q8_0 blocks) with n <= {m.n_ctx}")
    if n and not 0 <= state.tokens.min() <= state.tokens.max() < m.n_vocab:
        raise LlambaError(f"the state's token ids lie outside the vocabulary (0..{m.n_vocab - 1})")
    ctx.tokens = []
    n_cpu = len(m.layers)  # the layers after these are on the GPU
    ctx.cache.k[:, :, :n] = converted(state.k[:n_cpu], ctx.cache.k.dtype, c.head_dim)
    ctx.cache.v[:, :, :n] = converted(state.v[:n_cpu], ctx.cache.v.dtype, c.head_dim)
    if m.gpu is not None:
        m.gpu.write_cache(ctx.cache.device, *(converted(a[n_cpu:], np.float32, c.head_dim) for a in (state.k, state.v)))
    ctx.tokens = state.tokens.tolist()
