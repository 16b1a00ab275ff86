"""Hostile model files: metadata out of range, overlapping tensors, hostile chat templates, and a seeded fuzzer
over the tiny model. Every outcome is a success or one LlambaError, never another exception, a hang or a blow-up."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tiny_gguf
from gguf import GGUFReader
from test_cli import llamba

from runtime import LLM
from runtime.chat import ChatTemplateError
from runtime.errors import GGUFError, NumericsError, TokenizerError


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """tiny(overrides) -> path of the tiny model with those metadata overrides."""
    d, made = tmp_path_factory.mktemp("tiny"), {}

    def make(overrides=None):
        key = repr(sorted((overrides or {}).items()))
        if key not in made:
            made[key] = tiny_gguf.write(d / f"m{len(made)}.gguf", overrides)
        return made[key]
    return make


def test_tiny_model_runs(tiny):
    text = LLM(tiny(), warmup=False).generate("the", max_tokens=4, temperature=0)
    assert isinstance(text, str)


A = "llama."


@pytest.mark.parametrize("key, value, error, match", [
    (A + "rope.freq_base", -1.0, GGUFError, "rope.freq_base must be positive"),
    (A + "rope.freq_base", 0.0, GGUFError, "rope.freq_base must be positive"),
    (A + "rope.freq_base", float("nan"), GGUFError, "rope.freq_base must be positive"),
    (A + "rope.freq_base", float("inf"), GGUFError, "rope.freq_base must be positive"),
    (A + "attention.layer_norm_rms_epsilon", float("nan"), GGUFError, "norm_eps must be finite"),
    (A + "attention.layer_norm_rms_epsilon", -1e-5, GGUFError, "norm_eps must be finite and >= 0"),
    (A + "rope.scaling.type", "linear", None, None),  # factor 1 by default: no scaling, loads
    (A + "rope.scale_linear", float("inf"), GGUFError, "factor must be positive and finite"),
    (A + "final_logit_softcapping", float("nan"), GGUFError, "final_logit_softcap must be finite"),
    ("tokenizer.ggml.unknown_token_id", 10**5, TokenizerError, "unknown_token_id' = 100000 is outside"),
    ("tokenizer.ggml.padding_token_id", 259, TokenizerError, "padding_token_id' = 259 is outside"),
    ("tokenizer.ggml.padding_token_id", -1, TokenizerError, "padding_token_id' = -1 is outside"),
    (A + "block_count", True, GGUFError, "block_count' = True should be int, got bool"),
    (A + "context_length", False, GGUFError, "context_length' = False should be int, got bool"),
    ("tokenizer.ggml.eos_token_id", True, TokenizerError, "should be int, got bool"),
    ("tokenizer.ggml.add_bos_token", 1, TokenizerError, "should be bool, got int"),
    ("tokenizer.ggml.token_type", [True] * 259, TokenizerError, "token_type' must be a numeric array"),
])
def test_metadata_range_checked_at_load(tiny, key, value, error, match):
    path = tiny({key: value})
    if error is None:
        LLM(path, warmup=False).generate("the", max_tokens=2, temperature=0)
        return
    with pytest.raises(error, match=match):
        LLM(path, warmup=False)


def test_metadata_errors_are_one_line_at_the_cli(tiny):
    code, out, err = llamba("run", "-m", tiny({A + "rope.freq_base": float("nan")}), "-p", "the", "-n", 2)
    assert code == 1 and out == "" and err.startswith("error: ") and err.count("\n") == 1, err
    assert "rope.freq_base" in err


def _offset_position(path, index: int) -> int:
    """Byte position of the data-offset field of tensor `index` in the file."""
    reader = GGUFReader(path)
    part = reader.tensors[index].field.parts[-1]  # name length, name, n_dims, dims, type, offset
    return part.__array_interface__["data"][0] - reader.data.__array_interface__["data"][0]


def test_overlapping_tensors_are_refused(tmp_path):
    path = tiny_gguf.write(tmp_path / "m.gguf")
    reader = GGUFReader(path)
    first, second = reader.tensors[0], reader.tensors[1]
    assert first.data_offset + first.n_bytes <= second.data_offset
    blob = bytearray(path.read_bytes())
    at = _offset_position(path, 1)
    blob[at:at + 8] = np.uint64(first.data_offset - reader.data_offset).tobytes()  # second starts at the first
    path.write_bytes(bytes(blob))
    with pytest.raises(GGUFError, match="overlap in the file") as e:
        LLM(path, warmup=False)
    assert f"'{first.name}'" in str(e.value) and f"'{second.name}'" in str(e.value)


# ---- NaN weights: reported as NumericsError naming the tensor, on both kernel paths ------------------------------

def _nan_block_model(tmp_path, tensor: str):
    from gguf import GGMLQuantizationType
    from gguf.quants import quantize

    rows, cols = tiny_gguf.tensors()[tensor][0].shape[0], tiny_gguf.N_EMBD
    q = quantize(np.random.default_rng(1).normal(0, 0.2, (rows, cols)).astype(np.float32),
                 GGMLQuantizationType.Q8_0)
    q[rows // 2, 0:2] = np.frombuffer(np.float16(np.nan).tobytes(), np.uint8)  # the fp16 scale of one block
    return tiny_gguf.write(tmp_path / "nan.gguf", tensor_overrides={tensor: (q, GGMLQuantizationType.Q8_0)})


@pytest.mark.parametrize("path_kind", ["int", "float"])
@pytest.mark.parametrize("temperature", [0.0, 0.8, 1e-40])
def test_nan_weights_are_reported(tmp_path, monkeypatch, path_kind, temperature):
    import quant.matrix

    monkeypatch.setattr(quant.matrix, "DEFAULT_PATH", path_kind)
    path = _nan_block_model(tmp_path, "blk.0.ffn_up.weight")
    llm = LLM(path, warmup=False)
    assert {layer.w.w_up.path for layer in llm.model.layers} == {path_kind}
    with pytest.raises(NumericsError, match=r"NaN or infinite logits; tensors holding NaN or infinity: "
                                            r"blk\.0\.ffn_up\.weight \(1 non-finite\)"):
        llm.generate("the", max_tokens=3, temperature=temperature)


def test_overflowing_activations_are_reported(tmp_path):
    from gguf import GGMLQuantizationType

    huge = (np.full(tiny_gguf.N_EMBD, 3e38, np.float32), GGMLQuantizationType.F32)
    path = tiny_gguf.write(tmp_path / "inf.gguf", tensor_overrides={"output_norm.weight": huge})
    with pytest.raises(NumericsError, match="every tensor is finite, so an activation overflowed"):
        LLM(path, warmup=False).generate("the", max_tokens=2, temperature=0)
    code, out, err = llamba("run", "-m", path, "-p", "the", "-n", 2)
    assert code == 1 and err.startswith("error: ") and err.count("\n") == 1, err


# ---- chat templates: bounded in size, output and time; every failure a ChatTemplateError ----------------------

BOMBS = {
    "str repeat": "{{ 'x' * 3000000000 }}",
    "list repeat": "{{ ([1] * 10**9) | length }}",
    "center method": "{{ 'a'.center(10**10) }}",
    "center filter": "{{ 'a' | center(10**10) }}",
    "tojson indent": "{{ messages | tojson(indent=10**10) }}",
    "lipsum": "{{ lipsum(n=10**6) }}",
    "huge range": "{% for i in range(10**12) %}{% endfor %}",
    "zero division": "{{ 1 / 0 }}",
    "doubling ~": "{% set ns = namespace(s='xx') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
    "doubling +": "{% set ns = namespace(s='xx') %}{% for i in range(64) %}{% set ns.s = ns.s + ns.s %}{% endfor %}",
    "% width": "{{ '%999999999d' % 1 }}",
    "% star": "{{ '%*d' % (10**9, 1) }}",
    "format width": "{{ '{:>999999999}'.format(1) }}",
    "replace": "{{ ('x' * 1000000).replace('x', 'y' * 100) }}",
    "join": "{{ ',' .join([('x' * 8000000)] * 100) }}",
    "indent": "{{ ('x\n' * 4000000) | indent(1000) }}",
    "output": "{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %}",
    "power": "{{ 7 ** (10 ** 9) }}",
    "recursion": "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
}


@pytest.mark.parametrize("name", BOMBS)
def test_template_bombs_are_refused(name):
    import resource

    from runtime.chat import render

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ChatTemplateError):
        render([{"role": "user", "content": "hi"}], BOMBS[name])
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mib < 600, f"{name}: peak memory grew by {grown_mib:.0f} MiB"


def test_template_time_is_bounded(monkeypatch):
    import time

    from runtime import sandbox
    from runtime.chat import render

    monkeypatch.setattr(sandbox, "MAX_SECONDS", 0.5)
    start = time.monotonic()
    with pytest.raises(ChatTemplateError, match="ran longer than 0.5 s"):
        render([{"role": "user", "content": "hi"}],
               "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}")
    assert time.monotonic() - start < 3


def test_bounds_leave_real_templates_alone(model_path):
    """A long conversation through the shipped templates renders as transformers' sandbox renders it."""
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    from runtime.chat import render
    from runtime.gguf import GGUFFile

    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "word " * 200000},
                {"role": "assistant", "content": "ok"}, {"role": "user", "content": "again\n" * 1000}]
    for name in ("smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct"):
        with GGUFFile(model_path(name)) as f:
            template = f.metadata["tokenizer.chat_template"]
        plain = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                              extensions=[jinja2.ext.loopcontrols]).from_string(template)
        assert render(messages, template) == plain.render(messages=messages, add_generation_prompt=True,
                                                          bos_token="", eos_token="")


def test_template_bomb_in_a_model_file(tiny):
    path = tiny({"tokenizer.chat_template": BOMBS["str repeat"]})
    with pytest.raises(ChatTemplateError, match="would build 3000000000"):
        LLM(path, warmup=False).chat([{"role": "user", "content": "hi"}])
    code, out, err = llamba("chat", "-m", path, "-n", 2, stdin="hi\n")
    assert code == 1 and err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err


# ---- the fuzzer ------------------------------------------------------------------------------------------------

def test_fuzzed_files_load_or_raise_llamba_error():
    """tests/fuzz_gguf.py for 20 s in a child process limited to 3 GiB of data: every mutated file loads and
    generates, or raises a LlambaError; none hangs (20 s per case) or grows the process past 1 GiB."""
    root = Path(__file__).parent.parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, str(root / "tests" / "fuzz_gguf.py"), "--seed", "0", "--seconds", "20"],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["failures"] == [], json.dumps(report["failures"][:3], indent=1)
    assert report["cases"] >= 100 and report["counts"]["ok"] > 0 and report["counts"]["error"] > 0, report
    assert set(report["kinds"]) == {"field", "flip_header", "flip_any", "truncate"}, report
    assert report["peak_rss_mib"] < 1024, report
