"""Measuring llamba: `llamba bench` (bench.py, timing.py; llama.cpp as a peer in a child process: llamacpp.py),
the machine's streaming read bandwidth (bandwidth.py) and perplexity (perplexity.py). Nothing here is imported by
the engine."""
