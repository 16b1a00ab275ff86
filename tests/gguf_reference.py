"""transformers loading a real GGUF (weights dequantized to float32): the oracle for forward passes, greedy
text, perplexity and chat templates. Memoized for the whole session, so each model is parsed once however
many test modules ask for it. Callers must not modify what they get (or must restore it)."""

import contextlib
import functools

import gguf
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


@contextlib.contextmanager
def _memoized_gguf():
    """transformers parses the GGUF three times (config, weights, tokenizer) and rebuilds gguf's tensor name
    map for every module: memoize both (pure functions, no effect on the numbers) to cut minutes of loading."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(gguf, "GGUFReader", functools.cache(gguf.GGUFReader))
        mp.setattr(gguf, "get_tensor_name_map", functools.cache(gguf.get_tensor_name_map))
        yield


@functools.cache
def reference_tokenizer(path):
    with _memoized_gguf():
        return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)


@functools.cache
def reference_model(path):
    with _memoized_gguf():
        return AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
