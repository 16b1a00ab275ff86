"""What both sides of `llamba bench` share (light imports: the llama.cpp child process uses it too)."""

import resource
import time
from collections.abc import Callable


def time_test(decode: Callable, tokens, depth: int, n_prompt: int, n_gen: int) -> float:
    """Seconds of a test's timed part, llama-bench style: `n_prompt` tokens as one batch, then `n_gen`
    tokens one at a time, after the untimed `depth` tokens already in the KV cache.

    `decode(ids, pos)` evaluates ids at positions pos.. (logits of the last one); tokens holds at least
    depth + n_prompt + n_gen random ids, so no tokenization and no sampling is timed.
    """
    pos = depth
    t0 = time.perf_counter()
    if n_prompt:
        decode(tokens[pos:pos + n_prompt], pos)
        pos += n_prompt
    for _ in range(n_gen):  # generation: one token per decode
        decode(tokens[pos:pos + 1], pos)
        pos += 1
    return time.perf_counter() - t0


def peak_rss_bytes() -> int:
    """Peak resident set size of this process (VmHWM; ru_maxrss where /proc is missing)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
