"""GPU offload end to end: tiny converted models of every architecture, with all layers and the head on the GPU
(-ngl 99) and with a CPU/GPU split (-ngl 1: the last layer), against the CPU float path. On the GPU where there is
one, else in numba-cuda's simulator (tests/cuda_env.py).

The models are the converter tests' tiny random checkpoints (tests/hf_models.py) shrunk further for the simulator:
hidden 64, 4 heads of 16, MLP 128, 2 layers, vocabulary 400, weights drawn with std 0.1 so that greedy choices
are decisive. Checked: the logits of a 5-token prompt and of 3 decoded tokens within TOLERANCE of the CPU's
(relative to the largest logit; the GPU keeps keys and values in fp16, the CPU in float32), and the same 3 greedy
tokens. Measured in the simulator: 3e-5 (gpt2, phi2) to 2.9e-4 (gemma3, llama q4_k_m) with -ngl 99; the split's
are smaller (one layer's fp16 cache instead of two). Every architecture runs with everything on the GPU; the split,
whose layer code is the same and whose hand-over does not depend on the architecture, runs for three of them and
the mixed-type model (the simulator takes 5-10 s per model and setting).
"""

import os
import subprocess
import sys

import cuda_env  # noqa: I001  (first: picks the GPU or the simulator)
import numpy as np
import pytest
from hf_models import MODELS, bpe_tokenizer, save_model

from runtime.convert import convert
from runtime.gpu.placement import place
from runtime.model import load_model

pytestmark = cuda_env.needs_cuda
TOLERANCE = 1e-3  # of the largest |logit|
PROMPT = np.array([5, 17, 42, 99, 3], np.int32)
N_NEW = 3
SMALL = {"hidden_size": 64, "intermediate_size": 128, "initializer_range": 0.1}
SMALLER = {  # the architectures whose configs name these sizes differently, or fix them in hf_models.MODELS
    "gemma3": {"head_dim": 16, "query_pre_attn_scalar": 16}, "gpt2": {"n_inner": 128},
    "falcon": {"ffn_hidden_size": 128}, "falcon40b": {"ffn_hidden_size": 128},
    "opt": {"ffn_dim": 128, "word_embed_proj_dim": 64}, "mpt": {"d_model": 64}, "mptclip": {"d_model": 64},
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """tiny(kind, outtype) -> path of a converted tiny model, each built once."""
    made = {}

    def get(kind: str, outtype: str = "f32"):
        if (kind, outtype) not in made:
            d = tmp_path_factory.mktemp(f"{kind}-gpu")
            save_model(d, kind, "safetensors", bpe_tokenizer(d, "llama-bpe"), **SMALL | SMALLER.get(kind, {}))
            convert(d, d / f"{outtype}.gguf", outtype, progress=False, log=lambda s: None)
            made[kind, outtype] = d / f"{outtype}.gguf"
        return made[kind, outtype]
    return get


def _run(model) -> tuple:
    """(logits (len(PROMPT) + N_NEW, n_vocab): the prompt's, then each greedy step's; the greedy tokens)."""
    cache = model.new_cache()
    rows, tokens = [model.forward(PROMPT, 0, cache, all_logits=True)], []
    for i in range(N_NEW):
        tokens.append(int(np.argmax(rows[-1][-1])))
        rows.append(model.forward(np.array(tokens[-1:], np.int32), len(PROMPT) + i, cache)[None])
    return np.concatenate(rows), tokens


def _check(path, ngls=(99,), n_ctx: int = 16):
    ref, ref_tokens = _run(load_model(path, n_ctx=n_ctx))
    for ngl in ngls:
        got, tokens = _run(load_model(path, n_ctx=n_ctx, n_gpu_layers=ngl))
        err = np.abs(got - ref).max() / np.abs(ref).max()
        assert err < TOLERANCE, f"-ngl {ngl}: logits differ by {err:.2e} of the largest"
        assert tokens == ref_tokens, f"-ngl {ngl}"


@pytest.mark.parametrize("kind", list(MODELS))
def test_architectures_match_cpu(tiny, kind):
    _check(tiny(kind))


@pytest.mark.parametrize("kind", ["llama", "gemma3", "falcon40b"])
def test_split_matches_cpu(tiny, kind):
    """-ngl 1: the first layer on the CPU, the last on the GPU, the head on the CPU (llama; gemma3's four norms per
    layer and scaled embedding; falcon40b's parallel attention and MLP)."""
    _check(tiny(kind), ngls=(1,))


def test_mixed_block_types(tiny):
    """q4_k_m: each layer mixes 32-block types (rows of 64 are not K-quant rows), so Q|K|V and up|gate are
    uploaded as parts writing their own columns."""
    _check(tiny("llama", "q4_k_m"), ngls=(99, 1))


def test_launches_per_token(tiny):
    """A llama decode step: 9 launches per layer and 2 for the head (norm, matrix), nothing else; the figure
    bench reports."""
    from quant.kernels.cuda import target

    m = load_model(tiny("llama"), n_ctx=8, n_gpu_layers=99)
    cache = m.new_cache()
    m.forward(PROMPT[:2], 0, cache)
    start = target.launches()
    m.forward(PROMPT[2:3], 2, cache)
    assert target.launches() - start == 9 * m.config.n_layer + 2


def test_sessions_batch_and_state(tiny):
    """Sequences in their own caches decoded together (forward_batch: one set of matrix launches, RoPE and attention
    per sequence) give each one's own logits; a state saved from the GPU's fp16 cache continues on a CPU-only model
    as from the CPU's own cache."""
    path = tiny("llama")
    gpu, cpu = load_model(path, n_ctx=16, n_gpu_layers=1), load_model(path, n_ctx=16)
    a, b = gpu.new_cache(), gpu.new_cache()
    gpu.forward(PROMPT, 0, a)
    gpu.forward(PROMPT[:3], 0, b)
    batch = gpu.forward_batch([7, 9], [5, 3], [a, b])
    ref = [cpu.forward(np.array([*PROMPT, 7]), 0, cpu.new_cache()), cpu.forward(np.array([*PROMPT[:3], 9]), 0,
                                                                                 cpu.new_cache())]
    assert np.abs(batch - np.stack(ref)).max() < TOLERANCE * np.abs(ref).max()

    from runtime.generate import Context
    from runtime.state import capture, restore
    ctx = Context(gpu)
    ctx.eval(list(PROMPT))
    state = capture(ctx, "tiny")
    assert state.k.shape[0] == gpu.config.n_layer
    moved = Context(cpu)
    restore(moved, state)
    logits = cpu.forward(np.array([7]), 5, moved.cache)
    assert np.abs(logits - ref[0]).max() < TOLERANCE * np.abs(ref[0]).max()


def test_placement():
    """llama.cpp's -ngl: the last N layers; past n_layer the head too; 99 / -1: everything."""
    assert (place(24, 1).first, place(24, 1).head) == (23, False)
    assert (place(24, 24).first, place(24, 24).head) == (0, False)
    assert (place(24, 25).first, place(24, 25).head) == (0, True)
    assert place(24, 99) == place(24, -1) == place(24, 25)
    assert str(place(24, 3)) == "layers 21-23 (3 of 24)"


def test_cli_offloads(tiny, capsys):
    """`llamba run -ngl 99` says what it placed where, and writes the CPU's greedy text."""
    from runtime.cli import main

    argv = ["run", "-m", str(tiny("llama")), "-p", "the lazy dog", "-n", "3", "--temp", "0", "-c", "64"]
    assert main(argv) == 0
    cpu = capsys.readouterr().out
    assert main(argv + ["-ngl", "99"]) == 0
    out, err = capsys.readouterr()
    assert out == cpu
    assert "llamba: offloaded layers 0-1 (2 of 2) and the output head on GPU 0: " in err


def _cli_error(tiny, code: str) -> str:
    """stderr of `llamba run -ngl 1` in a fresh process (the real numba.cuda, not the simulator) after `code`."""
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    run = subprocess.run([sys.executable, "-c", f"{code}; from runtime.cli import main; import sys; sys.exit(main("
                          f"['run', '-m', {str(tiny('llama'))!r}, '-p', 'hi', '-n', '1', '-ngl', '1']))"],
                         env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 1 and run.stdout == ""
    return run.stderr


def test_no_numba_cuda_is_one_clear_error(tiny):
    err = _cli_error(tiny, "import sys; sys.modules['numba_cuda'] = None")
    assert err == 'error: -ngl 1: GPU offload needs numba-cuda, which is not installed: pip install -e ".[cuda]"\n'


def test_minus_one_falls_back_to_the_cpu(tiny, monkeypatch):
    """n_gpu_layers=-1, as llama-cpp-python programs pass it, runs on the CPU where no GPU can be used (a warning);
    a positive count there is an error."""
    from quant.kernels.cuda import target
    from runtime.errors import GPUError
    from runtime.gpu import NoGPUWarning

    def no_driver(index):
        raise target.CudaUnavailable("GPU offload needs the NVIDIA driver, which is missing or failed (test)")

    monkeypatch.setattr(target, "open_device", no_driver)
    with pytest.warns(NoGPUWarning, match="running on the CPU"):
        assert load_model(tiny("llama"), n_ctx=8, n_gpu_layers=-1).gpu is None
    with pytest.raises(GPUError, match=r"^-ngl 2: GPU offload needs the NVIDIA driver"):
        load_model(tiny("llama"), n_ctx=8, n_gpu_layers=2)


@pytest.mark.skipif(cuda_env.REAL_GPU, reason="this machine has a GPU")
def test_no_driver_is_one_clear_error(tiny):
    err = _cli_error(tiny, "pass")
    assert err.startswith("error: -ngl 1: GPU offload needs the NVIDIA driver, which is missing or failed (")
    assert err.count("\n") == 1


def test_bench_reports_the_offload(tiny):
    """`llamba bench -ngl 99`: the backend column says CUDA, a line says what went where and how many kernels a
    generated token launches."""
    from runtime.eval.bench import markdown, plan, run_bench

    rep = run_bench(tiny("llama"), plan([8], [1], []), [1], 1, n_gpu_layers=99)
    table = markdown(rep)
    assert "| llamba CUDA | 1 | pp8 |" in table
    assert ("llamba offload: layers 0-1 (2 of 2) and the output head on GPU 0: " in table
            and f" MiB per KV cache, {9 * 2 + 2} launches per token" in table)


# ---- on a real GPU only (tools/gpu_check.sh) ----

@pytest.mark.parametrize("qtype", ["Q4_K", "Q8_0"])
@pytest.mark.gpu
@cuda_env.real_gpu
def test_matvec_reads_at_gpu_speed(qtype):
    """A 8192 x 8192 matvec (token generation's kernel) streams its blocks faster than any CPU here can (>= 100 GB/s;
    the figure is printed, for the gpu_check log)."""
    import time

    from numba import cuda

    from quant import GGMLType, quantize
    from quant.kernels.cuda import target
    from quant.kernels.cuda.matrix import DeviceMatrix

    target.open_device(0)
    t = GGMLType[qtype]
    raw = quantize(np.random.default_rng(0).standard_normal((8192, 8192)).astype(np.float32), t)
    w = DeviceMatrix(raw, t, 8192)
    x, y, none = cuda.to_device(np.ones((1, 8192), np.float32)), cuda.device_array((1, 8192), np.float32), \
        target.nothing()
    w(x, y, none)
    cuda.synchronize()
    start = time.perf_counter()
    for _ in range(50):
        w(x, y, none)
    cuda.synchronize()
    gbps = 50 * raw.nbytes / (time.perf_counter() - start) / 1e9
    print(f"{qtype} matvec 8192x8192: {gbps:.0f} GB/s")
    assert gbps >= 100


@pytest.mark.gpu
@cuda_env.real_gpu
def test_real_model_on_the_gpu(model_path):
    """SmolLM2 (Q4_1, tied head) with everything on the GPU against the CPU float path, teacher-forced over a text."""
    from runtime.tokenizer import Tokenizer

    path = model_path("smollm2-135m-instruct")
    cpu, gpu = load_model(path, n_ctx=128), load_model(path, n_ctx=128, n_gpu_layers=99)
    ids = np.array(Tokenizer.from_gguf(cpu.gguf.metadata).encode("The quick brown fox jumps over the lazy dog. " * 4))
    ref = cpu.forward(ids, 0, cpu.new_cache(), all_logits=True)
    got = gpu.forward(ids, 0, gpu.new_cache(), all_logits=True)
    assert np.abs(got - ref).max() < 1e-2 * np.abs(ref).max()
    assert (got.argmax(1) == ref.argmax(1)).mean() >= 0.95
