"""A load test of an OpenAI-compatible server: N concurrent clients streaming chat completions.

    python tools/load_test.py --url http://127.0.0.1:8080 --clients 1,4 --requests 4 --max-tokens 64

Each client sends its requests one after the other (greedy, a fixed max_tokens, streaming with usage); the report
gives, per client count, the aggregate generation throughput (completion tokens of all requests / wall time), and
the per-request time to first token and total latency (p50, p90). Any server that speaks the API can be measured
(llamba serve, `python -m llama_cpp.server`, llama-server): run them side by side on the same model and threads.
A benchmark, not a test: machines are noisy, compare runs made together.
"""

import argparse
import json
import sys
import threading
import time

import numpy as np

PROMPTS = ["Write a short story about a lighthouse keeper.", "Explain how a bicycle stays upright.",
           "Describe the water cycle to a child.", "List some uses of a paperclip and explain each.",
           "What makes a good cup of tea?", "Tell me about the history of maps.",
           "How do bees communicate?", "Describe a walk through a forest in autumn."]


def _request(url: str, key: str | None, prompt: str, max_tokens: int) -> dict:
    """One streamed chat completion: time to first token, total time, completion tokens."""
    import httpx

    body = {"model": "x", "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    start, first, tokens, pieces = time.perf_counter(), None, 0, 0
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, headers=headers, timeout=600) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            if chunk.get("choices") and chunk["choices"][0].get("delta", {}).get("content"):
                pieces += 1
                first = first or time.perf_counter()
    end = time.perf_counter()
    return {"ttft": (first or end) - start, "latency": end - start, "tokens": tokens or pieces}


def run_load(url: str, clients: int, requests: int, max_tokens: int, key: str | None = None) -> dict:
    results, errors = [], []

    def client(i):
        for j in range(requests):
            try:
                results.append(_request(url, key, PROMPTS[(i * requests + j) % len(PROMPTS)], max_tokens))
            except Exception as e:  # noqa: BLE001 (counted and shown)
                errors.append(f"{type(e).__name__}: {e}")

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    tokens = sum(r["tokens"] for r in results)

    def pct(key: str, q: float) -> float:
        return float(np.percentile([r[key] for r in results], q)) if results else float("nan")

    return {"clients": clients, "requests": len(results), "errors": errors[:3], "n_errors": len(errors),
            "tokens": tokens, "wall_s": wall, "tok_per_s": tokens / wall,
            "ttft_p50": pct("ttft", 50), "ttft_p90": pct("ttft", 90),
            "latency_p50": pct("latency", 50), "latency_p90": pct("latency", 90)}


def markdown(rows: list, label: str) -> str:
    out = [f"### {label}", "", "| clients | requests | tokens | tok/s (all) | x one client | TTFT p50 | TTFT p90 |"
           " latency p50 | latency p90 | errors |", "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    base = rows[0]["tok_per_s"] if rows else 1.0
    for r in rows:
        out.append(f"| {r['clients']} | {r['requests']} | {r['tokens']} | {r['tok_per_s']:.1f} | "
                   f"{r['tok_per_s'] / base:.2f} | {r['ttft_p50']:.2f} s | {r['ttft_p90']:.2f} s | "
                   f"{r['latency_p50']:.2f} s | {r['latency_p90']:.2f} s | {r['n_errors']} |")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python tools/load_test.py", description=__doc__.splitlines()[0])
    ap.add_argument("--url", required=True, help="the server's base URL (without /v1)")
    ap.add_argument("--clients", default="1,4", help="comma-separated client counts (default: %(default)s)")
    ap.add_argument("--requests", type=int, default=4, help="requests per client (default: %(default)s)")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--api-key", default=None)
    ap.add_argument("--label", default=None, help="the table's title (default: the URL)")
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = ap.parse_args(argv)
    rows = [run_load(args.url, int(c), args.requests, args.max_tokens, args.api_key) for c in args.clients.split(",")]
    print(json.dumps(rows) if args.json else markdown(rows, args.label or args.url))
    return 0 if not any(r["n_errors"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
