"""What a grammar costs per generated token: median mask + advance time next to the median decode step.

    python tools/grammar_cost.py [MODEL] [--tokens 200] [--threads N]

Generates sampled JSON (temperature 1, a few seeds) under a JSON schema and under "any JSON object", timing
each step apart: Constraint.mask (llguidance's bitmask, then the numpy -inf fill), Constraint.advance, and
the model's decode forward (Context.append). MODEL defaults to qwen2.5-coder-0.5b-instruct (n_vocab 151936).
"""

import argparse
import time

import numpy as np

from runtime.generate import Context
from runtime.grammar import Grammar
from runtime.llm import LLM
from runtime.sampling import Sampler, SamplingParams
from runtime.threads import set_threads

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 24},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "languages": {"type": "array", "items": {"enum": ["python", "c", "rust", "go"]}, "maxItems": 4},
    },
    "required": ["name", "age", "languages"],
    "additionalProperties": False,
}
PROMPT = [{"role": "user", "content": "Describe a programmer as a JSON object."}]


def measure(llm: LLM, grammar: Grammar, n_tokens: int) -> dict:
    """Per-token seconds of each step, over sampled generations (seeds 0, 1, ...) until n_tokens are done."""
    ctx = Context(llm.model)
    prompt = llm.tokenize(llm.chat_prompt(PROMPT), add_bos=False)
    eog = llm.tokenizer.eog_ids
    times = {"mask": [], "advance": [], "decode": []}
    seed = 0
    while len(times["decode"]) < n_tokens:
        constraint, sampler = grammar.constraint(llm.tokenizer), Sampler(SamplingParams(temperature=1.0, seed=seed))
        logits, _ = ctx.eval(prompt)
        for _ in range(128):
            t0 = time.perf_counter()
            masked = constraint.mask(logits)
            t1 = time.perf_counter()
            token = sampler.sample(masked)
            if token in eog:
                break
            t2 = time.perf_counter()
            constraint.advance(token)
            t3 = time.perf_counter()
            if constraint.done:
                break
            logits = ctx.append(token)
            t4 = time.perf_counter()
            times["mask"].append(t1 - t0)
            times["advance"].append(t3 - t2)
            times["decode"].append(t4 - t3)
        seed += 1
    return {k: np.array(v) for k, v in times.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", nargs="?", default="qwen2.5-coder-0.5b-instruct")
    ap.add_argument("--tokens", type=int, default=200)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    llm = LLM(args.model, n_ctx=512)
    if args.threads:
        set_threads(args.threads)
    print(f"{llm.path.name}: n_vocab {llm.n_vocab}, {args.tokens} tokens per grammar, medians in ms")
    print("| grammar | mask | mask p90 | advance | mask + advance | decode step | share of a step |")
    print("|---|---|---|---|---|---|---|")
    for name, grammar in (("JSON schema", Grammar.from_json_schema(SCHEMA)), ("json_object", Grammar.json_object())):
        t = measure(llm, grammar, args.tokens)
        both, decode = np.median(t["mask"] + t["advance"]), np.median(t["decode"])
        ms = [np.median(t["mask"]), np.percentile(t["mask"], 90), np.median(t["advance"]), both, decode]
        print(f"| {name} | " + " | ".join(f"{1e3 * x:.2f}" for x in ms) + f" | {100 * both / decode:.1f}% |")


if __name__ == "__main__":
    main()
