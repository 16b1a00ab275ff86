"""Which layers go to the GPU, with llama.cpp's `-ngl` semantics: the last N repeating layers, and the output
head too when N exceeds the layer count; N < 0 (or 99 on any smaller model) offloads everything."""

from dataclasses import dataclass


@dataclass(frozen=True)
class Placement:
    n_layer: int
    first: int  # the first offloaded layer: layers first.. run on the GPU, 0..first-1 on the CPU
    head: bool  # the output norm and matrix (and softcap) on the GPU too

    @property
    def n_gpu(self) -> int:
        return self.n_layer - self.first

    def __str__(self) -> str:
        layers = f"layers {self.first}-{self.n_layer - 1}" if self.n_gpu > 1 else f"layer {self.first}"
        return f"{layers} ({self.n_gpu} of {self.n_layer}){' and the output head' if self.head else ''}"


def place(n_layer: int, n_gpu_layers: int) -> Placement:
    """n_gpu_layers > 0 (or < 0: all); the offload is not built for 0."""
    n = n_layer + 1 if n_gpu_layers < 0 else n_gpu_layers
    return Placement(n_layer, n_layer - min(n, n_layer), n > n_layer)
