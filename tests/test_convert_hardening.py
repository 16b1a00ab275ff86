"""The converter on hostile checkpoints: every bad config.json, tokenizer or safetensors value, and every output it
cannot write, ends in one ConvertError (`error: ...` and exit code 1 from the command), never a traceback, and
before anything the bad value sizes is allocated. Stale temporary files of killed conversions are removed.

The checkpoint is a hand-made llama (hidden 32, one layer, 8 tokens) written with numpy, so each case costs
milliseconds; the memory cases run the command in a child process whose address space is capped at 2 GiB.
"""

import json
import os
import resource
import shutil
import subprocess
import sys

import numpy as np
import pytest
from safetensors.numpy import save_file

from runtime.cli import main as llamba
from runtime.convert import ConvertError, convert
from runtime.convert.vocab import vocab_metadata
from runtime.gguf import GGUFFile

VOCAB = {"a": 0, "b": 1, "c": 2, "ab": 3, "abc": 4, "Ġ": 5}
ADDED = [{"id": 6, "content": "<s>", "special": True}, {"id": 7, "content": "</s>", "special": True}]
N_VOCAB, N_EMBD, N_FF = 8, 32, 64
CONFIG = {"architectures": ["LlamaForCausalLM"], "hidden_size": N_EMBD, "intermediate_size": N_FF,
          "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": N_VOCAB,
          "max_position_embeddings": 64, "rms_norm_eps": 1e-5, "rope_theta": 10000.0}
TOKENIZER = {"model": {"type": "BPE", "vocab": VOCAB, "merges": ["a b", "ab c"]}, "added_tokens": ADDED,
             "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}}
TOKENIZER_CONFIG = {"bos_token": "<s>", "eos_token": "</s>", "add_bos_token": False, "chat_template": "{{ x }}"}
MEMORY_CAP = 2 * 2**30  # bytes of address space the child process may map


def _weights() -> dict:
    rng = np.random.default_rng(0)
    shapes = {"model.embed_tokens.weight": (N_VOCAB, N_EMBD), "model.norm.weight": (N_EMBD,),
              "lm_head.weight": (N_VOCAB, N_EMBD)}
    layer = {"input_layernorm": (N_EMBD,), "post_attention_layernorm": (N_EMBD,),
             "self_attn.q_proj": (N_EMBD, N_EMBD), "self_attn.k_proj": (16, N_EMBD), "self_attn.v_proj": (16, N_EMBD),
             "self_attn.o_proj": (N_EMBD, N_EMBD), "mlp.gate_proj": (N_FF, N_EMBD), "mlp.up_proj": (N_FF, N_EMBD),
             "mlp.down_proj": (N_EMBD, N_FF)}
    shapes |= {f"model.layers.0.{k}.weight": v for k, v in layer.items()}
    return {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny-llama")
    for name, obj in (("config.json", CONFIG), ("tokenizer.json", TOKENIZER),
                      ("tokenizer_config.json", TOKENIZER_CONFIG)):
        (d / name).write_text(json.dumps(obj))
    save_file(_weights(), d / "model.safetensors")
    return d


@pytest.fixture
def model(base, tmp_path):
    """A fresh copy of the tiny checkpoint to damage."""
    return shutil.copytree(base, tmp_path / "model")


def edit(path, change):
    """Rewrite the JSON file at path with change(obj) (which may edit obj in place and return None)."""
    obj = json.loads(path.read_text())
    obj = change(obj) or obj
    path.write_text(json.dumps(obj))


def fails(model_dir, *fragments, out=None):
    """convert (a dry run unless out is given) raises a ConvertError whose message holds every fragment."""
    with pytest.raises(ConvertError) as e:
        convert(model_dir, out, "f32", dry_run=out is None, progress=False, log=lambda s: None)
    assert all(f in str(e.value) for f in fragments), str(e.value)
    return str(e.value)


def cli_fails(capsys, argv, *fragments):
    """`llamba convert ARGV` exits 1 with one `error:` line on stderr holding every fragment."""
    capsys.readouterr()
    assert llamba(["convert", *map(str, argv)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and all(f in err for f in fragments), err


def test_the_tiny_checkpoint_converts(model, tmp_path):
    out = tmp_path / "m.gguf"
    convert(model, out, "f32", progress=False, log=lambda s: None)
    with GGUFFile(out) as g:
        assert g.metadata["tokenizer.ggml.tokens"][:2] == ["a", "b"] and g.metadata["llama.block_count"] == 1


# ---- config.json


@pytest.mark.parametrize("change,fragments", [
    ({"rope_scaling": {"type": "linear"}}, ("RoPE", "'factor'")),
    ({"rope_theta": "abc"}, ("'rope_theta'", "'abc'")),
    ({"rope_scaling": [1]}, ("'rope_scaling'", "object")),
    ({"rope_scaling": {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": "x"}},
     ("'original_max_position_embeddings'",)),
    ({"rms_norm_eps": float("nan")}, ("'rms_norm_eps'",)),
    ({"rope_theta": -1.0}, ("'rope_theta'", "positive")),
    ({"rope_theta": 10**400}, ("'rope_theta'",)),
    ({"max_position_embeddings": 2**40}, ("'max_position_embeddings'",)),
    ({"num_attention_heads": 2**63}, ("'num_attention_heads'",)),
    ({"sliding_window": "abc"}, ("'sliding_window'",)),
    ({"architectures": 5}, ("'architectures'",)),
    ({"architectures": [["LlamaForCausalLM"]]}, ("'architectures'",)),
    ({"_name_or_path": {"a": 1}}, ("'_name_or_path'",)),
])
def test_bad_config_values(model, change, fragments):
    edit(model / "config.json", lambda cfg: cfg | change)
    fails(model, "config.json", *fragments)


def test_deeply_nested_config(model):
    (model / "config.json").write_text('{"a": ' + "[" * 100_000 + "]" * 100_000 + "}")
    fails(model, "config.json", "nested")


def test_rope_without_factor_via_cli(model, capsys):
    edit(model / "config.json", lambda cfg: cfg | {"rope_scaling": {"rope_type": "linear"}})
    cli_fails(capsys, [model, "--dry-run"], "config.json", "'factor'")


def test_a_huge_value_is_not_written_as_uint32(model, tmp_path, capsys):
    """GGUF stores hyperparameters as uint32: a context length past it is refused, not a struct.error."""
    edit(model / "config.json", lambda cfg: cfg | {"max_position_embeddings": 2**33})
    cli_fails(capsys, [model, "-o", tmp_path / "m.gguf"], "'max_position_embeddings'")
    assert not list(tmp_path.glob("*.gguf")) and not list(tmp_path.glob(".*partial"))


# ---- safetensors


def _header_file(path, header: dict, data: bytes = b""):
    raw = json.dumps(header).encode()
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + data)


@pytest.mark.parametrize("entry,fragment", [
    ({"dtype": "F32", "shape": [2**70], "data_offsets": [0, 4]}, "shape"),
    ({"dtype": "F32", "shape": [2**35, 2**35], "data_offsets": [0, 0]}, "needs"),
    ({"dtype": ["F32"], "shape": [1], "data_offsets": [0, 4]}, "dtype"),
])
def test_impossible_safetensors_entries(model, entry, fragment):
    _header_file(model / "model.safetensors", {"model.norm.weight": entry}, bytes(4))
    fails(model, "corrupt safetensors", fragment)


def test_deeply_nested_safetensors_header(model):
    raw = b"[" * 100_000 + b"]" * 100_000
    (model / "model.safetensors").write_bytes(len(raw).to_bytes(8, "little") + raw)
    fails(model, "corrupt safetensors", "nested")


def test_shard_outside_the_model_directory(model):
    (model / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"x": "/etc/hostname"}}))
    fails(model, "model.safetensors.index.json", "'/etc/hostname' is not a file name")


def test_deeply_nested_shard_index(model):
    (model / "model.safetensors.index.json").write_text("[" * 100_000 + "]" * 100_000)
    fails(model, "model.safetensors.index.json", "nested")


# ---- tokenizer files


def _added(change):
    def apply(tok):
        tok["added_tokens"][0] = change(tok["added_tokens"][0])
    return apply


@pytest.mark.parametrize("file,change,fragments", [
    ("tokenizer.json", lambda t: t["model"].update(merges=[[1, 2]]), ("merges", "[1, 2]")),
    ("tokenizer.json", lambda t: t["model"].update(merges=[["a", "b", "c"]]), ("merges",)),
    ("tokenizer.json", lambda t: t["model"].update(merges=5), ("merges",)),
    ("tokenizer.json", _added(lambda t: {"content": "<s>"}), ("added_tokens", "'id'")),
    ("tokenizer.json", _added(lambda t: t | {"content": 5}), ("added_tokens", "content")),
    ("tokenizer.json", _added(lambda t: t | {"id": "6"}), ("added_tokens", "'6'")),
    ("tokenizer.json", _added(lambda t: t | {"id": -1}), ("added_tokens", "-1", "outside")),
    ("tokenizer.json", _added(lambda t: t | {"id": 8}), ("added_tokens", "8", "outside")),
    ("tokenizer.json", lambda t: t.update(added_tokens={"a": 1}), ("added_tokens",)),
    ("tokenizer.json", lambda t: t["model"]["vocab"].update(a="0"), ("vocab", "'a'", "'0'")),
    ("tokenizer.json", lambda t: t["model"]["vocab"].update(a=-3), ("vocab", "'a'", "outside")),
    ("tokenizer.json", lambda t: t["model"]["vocab"].update(a=True), ("vocab", "'a'")),
    ("tokenizer.json", lambda t: t.update(model="BPE"), ("model",)),
    ("tokenizer.json", lambda t: t.update(pre_tokenizer=5), ("pre_tokenizer",)),
    ("tokenizer.json", lambda t: t.update(pre_tokenizer={"type": "Sequence", "pretokenizers": [5]}),
     ("pre_tokenizer",)),
    ("tokenizer.json", lambda t: t.update(post_processor={"type": "TemplateProcessing", "single": 5}),
     ("post_processor",)),
    ("tokenizer.json", lambda t: t.update(post_processor={"type": "TemplateProcessing",
                                                          "single": [{"SpecialToken": {"id": ["<s>"]}}]}),
     ("post_processor",)),
    ("tokenizer.json", lambda t: [1], ("tokenizer.json", "object")),
    ("tokenizer_config.json", lambda t: t.update(added_tokens_decoder={"abc": {"content": "x"}}),
     ("added_tokens_decoder", "'abc'")),
    ("tokenizer_config.json", lambda t: t.update(added_tokens_decoder={"-1": {"content": "x"}}),
     ("added_tokens_decoder", "-1")),
    ("tokenizer_config.json", lambda t: t.update(added_tokens_decoder={"1": {"content": 5}}),
     ("added_tokens_decoder", "content")),
    ("tokenizer_config.json", lambda t: t.update(added_tokens_decoder=[1]), ("added_tokens_decoder",)),
    ("tokenizer_config.json", lambda t: t.update(chat_template=[5]), ("chat_template",)),
    ("tokenizer_config.json", lambda t: t.update(chat_template=5), ("chat_template",)),
    ("tokenizer_config.json", lambda t: [1], ("tokenizer_config.json", "object")),
])
def test_bad_tokenizer_values(model, file, change, fragments):
    edit(model / file, change)
    with pytest.raises(ConvertError) as e:
        vocab_metadata(model, CONFIG)
    assert file in str(e.value) and all(f in str(e.value) for f in fragments), str(e.value)


def test_named_chat_templates_still_work(model):
    templates = [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]
    edit(model / "tokenizer_config.json", lambda t: t.update(chat_template=templates))
    assert vocab_metadata(model, CONFIG)["tokenizer.chat_template"] == "D"


def test_chat_template_file_not_utf8(model):
    (model / "chat_template.jinja").write_bytes(b"\xff\xfe{{ x }}")
    with pytest.raises(ConvertError, match="chat_template.jinja"):
        vocab_metadata(model, CONFIG)


def test_negative_token_id_is_not_written(model, tmp_path, capsys):
    edit(model / "tokenizer.json", _added(lambda t: t | {"id": -2}))
    cli_fails(capsys, [model, "-o", tmp_path / "m.gguf"], "tokenizer.json", "-2")
    assert not (tmp_path / "m.gguf").exists()


def test_token_text_that_is_not_unicode(model, tmp_path, capsys):
    """A lone surrogate (valid JSON, not encodable as UTF-8) in a token is reported, not a UnicodeEncodeError."""
    (model / "tokenizer.json").write_text(json.dumps(TOKENIZER).replace('"abc"', '"\\ud800"'))
    cli_fails(capsys, [model, "-o", tmp_path / "m.gguf"], "UTF-8")
    assert not list(tmp_path.glob("*.gguf")) and not list(tmp_path.glob(".*partial"))


def test_special_ids_outside_the_vocabulary_are_ignored(model, tmp_path):
    """As llama.cpp does: config.json special ids past the vocabulary are dropped, not written (past uint32, the
    writer crashed)."""
    edit(model / "tokenizer_config.json", lambda t: {k: v for k, v in t.items() if k != "eos_token"})
    edit(model / "config.json", lambda cfg: cfg | {"eos_token_id": 2**40, "pad_token_id": N_VOCAB})
    convert(model, tmp_path / "m.gguf", "f32", progress=False, log=lambda s: None)
    with GGUFFile(tmp_path / "m.gguf") as g:
        assert g.metadata["tokenizer.ggml.bos_token_id"] == 6
        assert "tokenizer.ggml.eos_token_id" not in g.metadata and "tokenizer.ggml.padding_token_id" not in g.metadata


def test_cli_names_the_bad_tokenizer_field(model, capsys):
    edit(model / "tokenizer_config.json", lambda t: t.update(added_tokens_decoder={"abc": {"content": "x"}}))
    cli_fails(capsys, [model, "--dry-run"], "tokenizer_config.json", "added_tokens_decoder")


# ---- sizes from untrusted values: refused before anything that large is allocated


def _capped_convert(model_dir, out) -> subprocess.CompletedProcess:
    """`llamba convert` in a child process that cannot map more than MEMORY_CAP bytes."""
    def cap():
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))
    env = os.environ | {"PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run([sys.executable, "-m", "runtime.cli", "convert", str(model_dir), "-o", str(out),
                           "--outtype", "f32"], capture_output=True, text=True, timeout=300, preexec_fn=cap, env=env)


@pytest.mark.parametrize("file,change,fragments", [
    ("config.json", lambda c: c.update(num_hidden_layers=100_000_000), ("100000000 layers", "tensors")),
    ("config.json", lambda c: c.update(num_local_experts=100_000_000, num_experts_per_tok=2), ("experts",)),
    ("tokenizer.json", _added(lambda t: t | {"id": 10**9}), ("1000000000", "outside")),
])
def test_untrusted_sizes_fail_fast(model, tmp_path, file, change, fragments):
    edit(model / file, change)
    proc = _capped_convert(model, tmp_path / "m.gguf")
    err = proc.stderr
    assert proc.returncode == 1 and err.startswith("error: ") and err.count("\n") == 1, err[-2000:]
    assert all(f in err for f in fragments), err


# ---- output


@pytest.mark.parametrize("out", ["/proc/llamba-test.gguf", "/proc/self/llamba-test.gguf"])
def test_unwritable_output(model, capsys, out):
    cli_fails(capsys, [model, "-o", out], "cannot write", out)


def test_stale_partials_of_dead_processes_are_removed(model, tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    stale = tmp_path / f".old.gguf.{dead_pid}.partial"
    live = tmp_path / f".other.gguf.{os.getpid()}.partial"
    unrelated = tmp_path / ".notes.partial"
    for p in (stale, live, unrelated):
        p.write_bytes(b"x")
    convert(model, tmp_path / "m.gguf", "f32", progress=False, log=lambda s: None)
    assert not stale.exists() and live.exists() and unrelated.exists() and (tmp_path / "m.gguf").is_file()
