"""GPU offload (numba-cuda): `-ngl N` runs a model's last N layers, and its output head when N exceeds the layer
count, with the kernels of quant/kernels/cuda; everything else stays on the CPU.

  placement.py  which layers go where (llama.cpp's -ngl semantics)
  layer.py      one decoder layer on the device: weights in their GGML blocks, f16 KV cache, kernel launches
  offload.py    the offloaded part of a Model: the hand-over of hidden states, the head, the warm-up

This module stays light (no numba.cuda): the CLI builds its options from it.
"""

import argparse
import warnings

from ..errors import GPUError


def add_arguments(p: argparse.ArgumentParser) -> None:
    """-ngl / --main-gpu, for every command that loads a model."""
    p.add_argument("-ngl", "--n-gpu-layers", type=int, default=0, metavar="N",
                   help="run the last N layers on the GPU, all of them and the output head when N exceeds the layer "
                        "count (99: everything; -1: everything if there is a GPU, else the CPU); needs pip install "
                        "-e \".[cuda]\" (default: 0, CPU only)")
    p.add_argument("--main-gpu", type=int, default=0, metavar="I", help="the GPU to use (default: %(default)s)")


class NoGPUWarning(UserWarning):
    """n_gpu_layers=-1 on a machine that cannot offload: the model runs on the CPU."""


def offload_layers(model, n_gpu_layers: int, main_gpu: int = 0):
    """A GPUOffload of model's last layers on GPU main_gpu. What is missing (numba-cuda, a driver, a GPU) is one
    GPUError line for N > 0; for -1, which llama-cpp-python programs pass by habit ("everything, if there is a GPU"),
    a NoGPUWarning and None (the CPU runs everything), as a CPU build of llama.cpp would."""
    from quant.kernels.cuda import target

    try:
        device = target.open_device(main_gpu)
        if n_gpu_layers < 0 and target.simulating():
            raise target.CudaUnavailable("numba-cuda's simulator is no GPU")  # but tests offload to it with N > 0
    except target.CudaUnavailable as e:
        if n_gpu_layers < 0:
            warnings.warn(f"n_gpu_layers=-1: {e}; running on the CPU", NoGPUWarning, stacklevel=4)
            return None
        raise GPUError(f"-ngl {n_gpu_layers}: {e}") from None
    from .offload import GPUOffload

    return GPUOffload(model, n_gpu_layers, device)
