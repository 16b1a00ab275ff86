"""The `llamba` command, run as a subprocess on SmolLM2.

Oracle: transformers loading the same GGUF (float32) generates greedily; `llamba run --temp 0` and
`llamba chat --temp 0` must print exactly its decoded text. Bad input must end with a one-line
`error: ...` on stderr and exit code 1, never a traceback.
"""

import os
import shutil
import subprocess
import sys

import pytest
from gguf_reference import reference_model, reference_tokenizer

from runtime import registry

MODEL = "smollm2-135m-instruct"
PROMPT = "The capital of France is"
N_RUN, N_CHAT = 10, 6
CHAT_TURNS = ["Hi! Who are you?", "What is 2+2?"]


def llamba(*args, stdin=None, timeout=600):
    """(exit code, stdout, stderr) of `python -m runtime.cli ARGS`."""
    proc = subprocess.run([sys.executable, "-m", "runtime.cli", *map(str, args)], input=stdin, capture_output=True,
                          text=True, timeout=timeout)
    return proc.returncode, proc.stdout, proc.stderr


def hf_greedy(hf, tok, text: str, n: int) -> str:
    import torch

    ids = tok(text, return_tensors="pt", add_special_tokens=False).input_ids  # (1, n_prompt)
    with torch.no_grad():
        out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                          eos_token_id=tok.eos_token_id, pad_token_id=tok.eos_token_id)
    return tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


@pytest.fixture(scope="module")
def oracle(model_path):
    """transformers' greedy texts: the PROMPT continuation, its prompt length, the replies of a two-turn chat."""
    path = model_path(MODEL)
    tok, hf = reference_tokenizer(path), reference_model(path)
    run_text = hf_greedy(hf, tok, PROMPT, N_RUN)
    history, replies = [], []
    for turn in CHAT_TURNS:
        history.append({"role": "user", "content": turn})
        prompt = tok.apply_chat_template(history, tokenize=False, add_generation_prompt=True)
        replies.append(hf_greedy(hf, tok, prompt, N_CHAT))
        history.append({"role": "assistant", "content": replies[-1]})
    return run_text, len(tok(PROMPT, add_special_tokens=False).input_ids), replies


def test_run_greedy_matches_transformers(oracle):
    # no -m: the default model (SmolLM2)
    assert registry.DEFAULT_MODEL == MODEL
    code, out, err = llamba("run", "-p", PROMPT, "-n", N_RUN, "--temp", 0, "-c", 64, "-t", 2)
    assert code == 0, err
    assert out == oracle[0] + "\n"
    summary = err.strip().splitlines()[-1]
    assert "load" in summary and f"prompt {oracle[1]} tokens" in summary and "tok/s" in summary
    assert f"generation {N_RUN} tokens" in summary


def test_tiny_temperature_is_greedy(oracle):
    """--temp 1e-40 divided logits into inf - inf = NaN and crashed sampling; it is greedy in the limit."""
    code, out, err = llamba("run", "-p", PROMPT, "-n", N_RUN, "--temp", 1e-40, "-c", 64, "--seed", 3)
    assert code == 0, err
    assert out == oracle[0] + "\n"


@pytest.mark.parametrize("command,code,message", [("run", 1, "error: no prompt"), ("chat", 0, "")])
def test_closed_stdin(command, code, message):
    """`llamba run <&-` and `llamba chat <&-` (sys.stdin is None): an error line, or an empty chat."""
    proc = subprocess.run([sys.executable, "-m", "runtime.cli", command, "-m", MODEL, "-c", "64"], capture_output=True,
                          text=True, timeout=600, preexec_fn=lambda: os.close(0))
    assert proc.returncode == code and "Traceback" not in proc.stderr, proc.stderr
    assert message in proc.stderr


@pytest.mark.parametrize("command", ["run", "chat"])
def test_stdin_not_utf8(command):
    proc = subprocess.run([sys.executable, "-m", "runtime.cli", command, "-m", MODEL, "-c", "64"],
                          input=b"\xff\xfe hi\n", capture_output=True, timeout=600)
    err = proc.stderr.decode()
    assert proc.returncode == 1 and err.startswith("error: ") and err.count("\n") == 1, err
    assert "not valid" in err  # UTF-8 (strict stdin) or Unicode (surrogateescape stdin, caught by the tokenizer)


def test_chat_piped_stdin_matches_transformers(oracle):
    stdin = "\n".join(CHAT_TURNS) + "\n"
    code, out, err = llamba("chat", "-m", MODEL, "--temp", 0, "-n", N_CHAT, "-c", 256, stdin=stdin)
    assert code == 0, err
    assert out == "".join(reply + "\n" for reply in oracle[2])


def _unsupported_arch_gguf(path):
    import numpy as np
    from gguf import GGUFWriter

    w = GGUFWriter(str(path), "mamba")
    w.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.mark.parametrize("case", ["missing", "not_gguf", "unsupported", "unknown_name", "overflow", "bad_param",
                                  "huge_ctx", "not_utf8"])
def test_errors_are_one_line(case, tmp_path, model_path):
    args = {
        "missing": ["run", "-m", tmp_path / "nope.gguf", "-p", "x"],
        "not_gguf": ["run", "-m", tmp_path / "text.gguf", "-p", "x"],
        "unsupported": ["run", "-m", tmp_path / "mamba.gguf", "-p", "x"],
        "unknown_name": ["run", "-m", "no-such-model", "-p", "x"],
        "overflow": ["run", "-m", model_path(MODEL), "-c", 16, "-p", "word " * 40],
        "bad_param": ["run", "-m", model_path(MODEL), "-p", "x", "--top-p", 3],
        "huge_ctx": ["run", "-m", model_path(MODEL), "-c", 10**9, "-p", "x"],  # refused before allocating
        "not_utf8": ["run", "-m", model_path(MODEL), "-p", "\udcff\udcfe hi"],  # argv bytes ff fe: not UTF-8
    }[case]
    (tmp_path / "text.gguf").write_text("just some text, definitely not GGUF\n" * 10)
    _unsupported_arch_gguf(tmp_path / "mamba.gguf")
    code, out, err = llamba(*args)
    assert code == 1 and out == ""
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    expected = {"missing": "no such file", "not_gguf": "not a GGUF", "unsupported": "mamba",
                "unknown_name": "unknown model", "overflow": "n_ctx=16", "bad_param": "top_p",
                "huge_ctx": "exceeds the 8192 positions", "not_utf8": "not valid Unicode"}[case]
    assert expected in err


def test_list_via_console_script():
    exe = shutil.which("llamba")
    assert exe, "the llamba console script is not installed (pip install -e .)"
    proc = subprocess.run([exe, "list"], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "LLAMBA_CACHE": os.fspath(registry.cache_dir())})
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    for name, model in registry.MODELS.items():
        (line,) = [x for x in lines if x.split()[0] == name]
        cached = (registry.cache_dir() / model.filename).exists()
        assert ("not cached" not in line) == cached and f"{model.size / 1e6:.1f} MB" in line


def test_list_shows_uncached(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "runtime.cli", "list"], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "LLAMBA_CACHE": os.fspath(tmp_path)})
    assert proc.returncode == 0
    assert sum("not cached" in line for line in proc.stdout.splitlines()) == len(registry.MODELS)


def test_chat_forgets_oldest_turns_to_fit_context():
    from runtime.cli import _drop_old_turns

    class WordLLM:  # one token per word, a prompt is the messages' words
        n_ctx = 10
        chat_prompt = staticmethod(lambda history: " ".join(m["content"] for m in history))
        tokenize = staticmethod(str.split)

    history = [{"role": "system", "content": "s s"}]
    for i in range(4):
        history += [{"role": "user", "content": f"u{i} u"}, {"role": "assistant", "content": f"a{i} a"}]
    history.append({"role": "user", "content": "now"})
    _drop_old_turns(WordLLM(), history)
    # 19 words; without exchange 0: 15, without 1: 11, without 2: 7 < 10
    assert [m["content"] for m in history] == ["s s", "u3 u", "a3 a", "now"]


def test_list_says_base_or_instruct(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "runtime.cli", "list"], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "LLAMBA_CACHE": os.fspath(tmp_path)})
    assert proc.returncode == 0
    kinds = {line.split()[0]: line.split()[1 if "(default)" not in line else 2] for line in proc.stdout.splitlines()
             if line.split() and line.split()[0] in registry.MODELS}
    assert kinds == {name: m.kind for name, m in registry.MODELS.items()}
    assert kinds["gemma-3-270m"] == "base" and kinds[MODEL] == "instruct"


# A chat transcript whose greedy continuation starts with SmolLM2's control token <|im_start|> (not an
# end-of-generation token, so it is generated, then printed or not).
TRANSCRIPT = "<|im_start|>user\nHi<|im_end|>\n"


def test_special_tokens_hidden_unless_asked():
    code, plain, err = llamba("run", "-p", TRANSCRIPT, "-n", 3, "--temp", 0, "-c", 64)
    assert code == 0, err
    code, special, err = llamba("run", "-p", TRANSCRIPT, "-n", 3, "--temp", 0, "-c", 64, "--special")
    assert code == 0, err
    assert special.startswith("<|im_start|>"), special  # shown as text with --special
    assert "<|im_start|>" not in plain and plain == special.replace("<|im_start|>", "")


def test_chat_without_template_warns(monkeypatch, capsys):
    from runtime import cli, llm

    class NoTemplate(llm.LLM):  # SmolLM2 as if its file had no chat template (as a base model's has none)
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.tokenizer.chat_template = None

    monkeypatch.setattr(llm, "LLM", NoTemplate)
    monkeypatch.setattr(sys, "stdin", __import__("io").StringIO("Hi\n"))
    assert cli.main(["chat", "-m", MODEL, "-n", "2", "--temp", "0", "-c", "64"]) == 0
    err = capsys.readouterr().err
    assert err.count("has no chat template") == 1 and "base" in err


@pytest.mark.parametrize("tool", ["convert", "quantize", "perplexity"])
def test_tools_name_themselves(tool):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, os.path.join(root, "tools", f"{tool}.py"), "--help"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"usage: python tools/{tool}.py "), proc.stdout[:80]
    assert "llamba" not in proc.stdout.splitlines()[0]


def test_py_typed_ships_in_the_package(tmp_path):
    # PEP 561: the built packages carry py.typed (setup.py package_data), so type checkers read llamba's hints
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, "setup.py", "-q", "build", "--build-base", os.fspath(tmp_path)], cwd=root,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "lib" / "runtime" / "py.typed").is_file() and (tmp_path / "lib" / "quant" / "py.typed").is_file()
    assert (tmp_path / "lib" / "quant" / "jit" / "cache.py").is_file()
