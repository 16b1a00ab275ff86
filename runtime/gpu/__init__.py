"""GPU offload (numba-cuda): `-ngl N` runs a model's last N layers, and its output head when N exceeds the layer
count, with the kernels of quant/kernels/cuda; everything else stays on the CPU.

  placement.py  which layers go where (llama.cpp's -ngl semantics)
  layer.py      one decoder layer on the device: weights in their GGML blocks, f16 KV cache, kernel launches
  offload.py    the offloaded part of a Model: the hand-over of hidden states, the head, the warm-up

This module stays light (no numba.cuda): the CLI builds its options from it.
"""

import argparse

from ..errors import GPUError


def add_arguments(p: argparse.ArgumentParser) -> None:
    """-ngl / --main-gpu, for every command that loads a model."""
    p.add_argument("-ngl", "--n-gpu-layers", type=int, default=0, metavar="N",
                   help="run the last N layers on the GPU, all of them and the output head when N exceeds the layer "
                        "count (99 or -1: everything); needs pip install -e \".[cuda]\" (default: 0, CPU only)")
    p.add_argument("--main-gpu", type=int, default=0, metavar="I", help="the GPU to use (default: %(default)s)")


def offload_layers(model, n_gpu_layers: int, main_gpu: int = 0):
    """A GPUOffload of model's last layers on GPU main_gpu; GPUError (one line) naming what is missing."""
    from quant.kernels.cuda import target

    try:
        device = target.open_device(main_gpu)
    except target.CudaUnavailable as e:
        raise GPUError(f"-ngl {n_gpu_layers}: {e}") from None
    from .offload import GPUOffload

    return GPUOffload(model, n_gpu_layers, device)
