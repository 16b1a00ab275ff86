"""Mixture-of-experts routing on the GPU, so an offloaded Mixtral layer never asks the host which experts run.

route: one thread per token picks the k largest router logits (ties to the lower expert, as a stable sort) and
their softmax weights renormalized over the k (the full softmax's denominator cancels). The experts' matrices
then run as matvecs with ids (matvec.py), each (token, slot) its own expert; combine adds the weighted outputs
to the residual stream.
"""

import math

from numba import cuda, float32

from .target import STRIDE_THREADS, Kernel, blocks_for, stride_grid


@Kernel
def route_kernel(logits, k, ids, weights):
    # logits (n, n_expert) float32 -> ids, weights (n * k,): slot s of token t at t * k + s, most probable first
    t = cuda.grid(1)
    if t >= logits.shape[0]:
        return
    n_expert = logits.shape[1]
    top = float32(-math.inf)
    for e in range(n_expert):
        top = max(top, logits[t, e])
    total = float32(0.0)
    for s in range(k):  # k passes of an argmax over the experts not taken yet
        best, best_e = float32(-math.inf), -1
        for e in range(n_expert):
            taken = False
            for u in range(s):
                taken = taken or ids[t * k + u] == e
            if not taken and (best_e == -1 or logits[t, e] > best):
                best, best_e = logits[t, e], e
        ids[t * k + s] = best_e
        weights[t * k + s] = math.exp(best - top)
        total += weights[t * k + s]
    for s in range(k):
        weights[t * k + s] /= total


@Kernel
def combine_kernel(ys, weights, k, x):
    # x (n, d) += sum over slots s of weights[t k + s] * ys[t k + s]
    d = x.shape[1]
    for e in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        t, i = e // d, e % d
        acc = float32(0.0)
        for s in range(k):
            acc += weights[t * k + s] * ys[t * k + s, i]
        x[t, i] += acc


def route(logits, k: int, ids, weights) -> None:
    route_kernel[blocks_for(logits.shape[0], STRIDE_THREADS), STRIDE_THREADS](logits, k, ids, weights)


def combine(ys, weights, k: int, x) -> None:
    combine_kernel[stride_grid(x.size)](ys, weights, k, x)
