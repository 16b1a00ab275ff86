"""llamba bench (runtime/bench.py): the tests it plans, the table and JSON it prints on a real model, the
weight bytes per token checked against the gguf package's reader, and the CLI's errors. Functional only:
nothing here asserts a speed."""

import dataclasses
import json

import gguf
import numpy as np
import pytest

from runtime import cli
from runtime.errors import LlambaError
from runtime.eval import bench
from runtime.eval import llamacpp as lcpp
from runtime.eval.bandwidth import _stream_sum, read_bandwidth

SMOL = "smollm2-135m-instruct"


def test_plan_follows_llama_bench_names():
    tests = bench.plan([512, 0], [128], [512, 2048])
    assert [t.name for t in tests] == ["pp512", "tg128", "tg128 @ d512", "tg128 @ d2048"]
    assert [t.n_tokens for t in tests] == [512, 128, 128, 128]
    assert bench.int_list("1,2", "-t", 1) == [1, 2]
    for bad in ("x", "1,,2", "0"):
        with pytest.raises(LlambaError, match="-t"):
            bench.int_list(bad, "-t", 1)
    with pytest.raises(LlambaError, match="no test"):
        bench.plan([0], [0], [])


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("n", [1, 7, 1000, 4099])
def test_bandwidth_probe_reads_every_element_once(n, threads):
    # a probe that skipped or repeated part of the array would misstate the bandwidth; oracle: numpy's sum
    # of small integers (exact in float32), split into `threads` slices, the last one shorter or empty
    a = (np.arange(n) % 5).astype(np.float32)
    assert _stream_sum(a, threads) == a.astype(np.int64).sum()
    with pytest.raises(ValueError, match="nbytes"):
        read_bandwidth(2)


@pytest.fixture(scope="module")
def report(model_path):
    tests = bench.plan([8], [2], [4])
    return bench.run_bench(model_path(SMOL), tests, [1], repetitions=2, bandwidth_gb=0.05)


def test_report_table(report):
    text = bench.markdown(report)
    lines = text.splitlines()
    assert lines[0].startswith("| model | size | params | backend | threads | test | t/s |")
    rows = [line.split(" | ") for line in lines[2:5]]
    assert [r[5] for r in rows] == ["pp8", "tg2", "tg2 @ d4"]
    for r in rows:
        assert r[0] == "| llama 135M Q4_1" and r[3] == "llamba CPU" and r[4] == "1"
        mean, sd = (float(v) for v in r[6].split(" ± "))
        assert mean > 0 and sd >= 0
    assert rows[1][7].endswith("% |") and rows[0][7] == " |"  # tg against the bandwidth bound only
    assert "time to first token" in text and "peak RSS" in text and "bandwidth 1T" in text
    from quant.jit import isa

    assert f"kernels: llamba integer dots {isa.ISA} (" in text and "numpy BLAS " in text
    per_token = report.model.bytes_per_token
    assert "last-level cache" in bench.markdown(dataclasses.replace(report, llc_bytes=per_token))
    assert "last-level cache" not in bench.markdown(dataclasses.replace(report, llc_bytes=per_token - 1))


def test_report_json(report, model_path):
    out = json.loads(json.dumps(bench.as_json(report)))
    results = out["results"]
    assert [(r["test"], r["n_prompt"], r["n_gen"], r["n_depth"]) for r in results] == [
        ("pp8", 8, 0, 0), ("tg2", 0, 2, 0), ("tg2 @ d4", 0, 2, 4)]
    for r in results:
        assert len(r["samples_ns"]) == len(r["samples_ts"]) == 2
        n = r["n_prompt"] + r["n_gen"]
        assert np.allclose(r["samples_ts"], [n * 1e9 / s for s in r["samples_ns"]], rtol=1e-6)
        assert r["avg_ts"] == pytest.approx(np.mean(r["samples_ts"]))
        assert r["stddev_ts"] == pytest.approx(np.std(r["samples_ts"], ddof=1))
    (engine,) = out["engines"]
    assert engine["name"] == "llamba" and engine["load_s"] > 0 and engine["ttft_s"] > 0
    assert engine["peak_rss_bytes"] > report.model.size / 2  # the weights were read through the map
    assert out["bandwidth_gbps"]["1"] > 0 and out["ratios"] == []
    assert out["kernels"]["isa"] in out["kernels"]["isa_supported"] and out["kernels"]["blas"]

    # oracle: the gguf package's reader. SmolLM2 ties the output to the embeddings, so a token reads every
    # tensor once, the embeddings a second time in full (output) plus one row (lookup)
    reader = gguf.GGUFReader(model_path(SMOL))
    embd = next(t for t in reader.tensors if t.name == "token_embd.weight")
    assert not any(t.name == "output.weight" for t in reader.tensors)
    size = sum(int(t.n_bytes) for t in reader.tensors)
    assert results[0]["model_size"] == size
    assert results[0]["model_n_params"] == sum(int(t.n_elements) for t in reader.tensors)
    assert out["bytes_per_token"] == size + int(embd.n_bytes) // int(embd.shape[1])
    assert results[1]["bw_bound_ts"] == pytest.approx(out["bandwidth_gbps"]["1"] * 1e9 / out["bytes_per_token"])


def test_cli_stdout_is_the_table_only(capsys):
    # `llamba bench > table.md` must hold the table: per-test progress (and compile progress) go to stderr
    assert cli.main(["bench", "-m", SMOL, "-p", "8", "-n", "2", "-r", "1", "-t", "1"]) == 0
    out, err = capsys.readouterr()
    lines = out.rstrip("\n").split("\n")
    assert lines[0].startswith("| model |") and lines[1].startswith("|---|")
    table = lines[:lines.index("")]
    assert len(table) == 4 and all(line.startswith("|") and line.endswith("|") for line in table)
    assert all(line.startswith(("llamba (", "kernels:", "1 repetitions")) for line in lines[len(table) + 1:]), out
    assert "llamba 1T pp8:" in err and "llamba 1T tg2:" in err and "t/s" not in out.replace("| t/s |", "")


@pytest.mark.parametrize("argv, message", [
    (["-p", "abc"], "-p must be a comma-separated list"),
    (["-p", "0", "-n", "0"], "no test to run"),
    (["-r", "0"], "repetitions must be >= 1"),
    (["-t", "999"], "threads must be an integer"),
])
def test_cli_errors(argv, message, capsys):
    assert cli.main(["bench", "-m", SMOL, *argv]) == 1
    assert message in capsys.readouterr().err


def test_compare_without_llama_cpp_says_how_to_install(monkeypatch, capsys):
    monkeypatch.setattr(lcpp.importlib.util, "find_spec", lambda name: None)
    assert cli.main(["bench", "-m", SMOL, "--compare", "llama.cpp"]) == 1
    assert 'pip install -e ".[interop]"' in capsys.readouterr().err


def test_compare_with_llama_cpp(model_path):
    pytest.importorskip("llama_cpp")  # the interop extra
    rep = bench.run_bench(model_path(SMOL), bench.plan([8], [2], []), [1], repetitions=1, compare="llama.cpp")
    assert [(r.engine, r.test.name) for r in rep.results] == [
        ("llamba", "pp8"), ("llama.cpp", "pp8"), ("llamba", "tg2"), ("llama.cpp", "tg2")]
    assert all(r.mean > 0 for r in rep.results)
    ratios = bench.as_json(rep)["ratios"]
    assert [r["test"] for r in ratios] == ["pp8", "tg2"] and all(r["ratio"] > 0 for r in ratios)
    assert "| test | threads | llamba t/s | llama.cpp t/s | llamba / llama.cpp |" in bench.markdown(rep)
    assert all(e.peak_rss > 0 and e.load_s > 0 for e in rep.engines)


def test_synthetic_file_loads_in_both_engines(tmp_path, model_path):
    """The 7B workload's writer at test size: llama.cpp's Q4_K_M mix, finite random blocks, a real tokenizer;
    llamba and llama.cpp load it and give finite logits."""
    from runtime.eval.synthetic import RANDOM_NOTE, write_synthetic
    from runtime.gguf import GGUFFile
    from runtime.model import load_model

    out = tmp_path / "tiny.gguf"
    res = write_synthetic(out, "tiny", model_path(SMOL), log=lambda s: None)
    assert res.path == out and not list(tmp_path.glob(".*partial"))  # written to a temporary file, renamed
    with GGUFFile(out) as g:
        types = {n: t.qtype.name for n, t in g.tensors.items()}
        assert RANDOM_NOTE in g.metadata["general.description"]
        assert len(g.metadata["tokenizer.ggml.tokens"]) == g.tensors["output.weight"].shape[0] == 49152
    assert types["output.weight"] == "Q6_K" and types["blk.0.attn_q.weight"] == "Q4_K"
    # llama.cpp's use_more_bits over 2 layers: the last one (i >= 7n/8) gets Q6_K
    assert [types[f"blk.{i}.{k}.weight"] for k in ("attn_v", "ffn_down") for i in (0, 1)] == ["Q4_K", "Q6_K"] * 2
    model = load_model(out, 64)
    logits = model.forward(np.arange(1, 9), 0, model.new_cache())
    assert np.all(np.isfinite(logits)) and np.std(logits) > 0
    pytest.importorskip("llama_cpp", reason='llama-cpp-python is not installed: pip install -e ".[interop]"')
    from runtime.eval.llamacpp import open_llama

    llm = open_llama(model_path=str(out), n_ctx=64, n_batch=64, logits_all=True, verbose=False, n_threads=2)
    llm.eval(list(range(1, 9)))
    theirs = np.array(llm.scores[:8])
    assert np.all(np.isfinite(theirs)) and np.std(theirs) > 0
