"""Element-wise kernels on the GPU: the MLP's activation (times the gate), the logits' softcap, the Q/K/V clamp.
Each is a grid-stride loop over a 2-D array."""

import math

from numba import cuda, float32, njit

from .target import Kernel, stride_grid

ACTIVATIONS = {"silu": 0, "gelu_tanh": 1, "gelu": 2, "relu": 3}  # the codes of layers.ACTIVATIONS' functions
_GELU_C = float32(math.sqrt(2.0 / math.pi))


@njit(inline="always")
def _act(x, code):
    if code == 0:
        return x / (float32(1.0) + math.exp(-x))
    if code == 1:
        return float32(0.5) * x * (float32(1.0) + math.tanh(_GELU_C * (x + float32(0.044715) * x * x * x)))
    if code == 2:
        return float32(0.5) * x * (float32(1.0) + math.erf(x * float32(0.7071067811865476)))
    return max(x, float32(0.0))


@Kernel
def act_kernel(ug, gated, code, out):
    # ug (n, n_ff) up, or (n, 2 n_ff) up | gate -> out (n, n_ff) = act(up), or act(gate) * up
    n_ff = out.shape[1]
    for e in range(cuda.grid(1), out.size, cuda.gridsize(1)):
        t, i = e // n_ff, e % n_ff
        out[t, i] = _act(ug[t, n_ff + i], code) * ug[t, i] if gated else _act(ug[t, i], code)


@Kernel
def softcap_kernel(y, cap):
    # y (n, m) = cap * tanh(y / cap), in place
    m = y.shape[1]
    for e in range(cuda.grid(1), y.size, cuda.gridsize(1)):
        y[e // m, e % m] = cap * math.tanh(y[e // m, e % m] / cap)


@Kernel
def clamp_kernel(y, limit):
    # y (n, m) clipped to [-limit, limit], in place
    m = y.shape[1]
    for e in range(cuda.grid(1), y.size, cuda.gridsize(1)):
        y[e // m, e % m] = min(max(y[e // m, e % m], -limit), limit)


def activate(ug, gated: bool, activation: str, out) -> None:
    """out (n, n_ff) = act(gate) * up from ug = up | gate (n, 2 n_ff), or act(up) from ug = up (n, n_ff)."""
    act_kernel[stride_grid(out.size)](ug, int(gated), ACTIVATIONS[activation], out)


def softcap(y, cap: float) -> None:
    softcap_kernel[stride_grid(y.size)](y, float32(cap))


def clamp(y, limit: float) -> None:
    clamp_kernel[stride_grid(y.size)](y, float32(limit))
