"""The Python API: `LLM` loads a GGUF model once and generates, streams, chats, tokenizes.

    from runtime import LLM
    llm = LLM()                                   # default model, fetched into the cache if missing
    print(llm.generate("The capital of France is", max_tokens=16, temperature=0))
    for piece in llm.chat([{"role": "user", "content": "Hi!"}], stream=True):
        print(piece, end="", flush=True)
    other = llm.session()                         # a second conversation over the same weights

llama-cpp-python's high-level calls (`create_completion`, `llm(...)`, `create_chat_completion`, OpenAI-shaped dicts)
come from runtime/completions.py, their asyncio versions and `astream` from runtime/aio.py: code written for
`llama_cpp.Llama` runs with `from runtime import LLM as Llama`.
"""

import os
import sys
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Iterator, Sequence

import numpy as np

from . import aio, completions, embeddings, registry, state
from .errors import LlambaError
from .generate import Context, GenerationStats, generate
from .model import load_model
from .sampling import Sampler, SamplingParams
from .state import SessionState
from .threads import check_threads, set_threads
from .tokenizer import Tokenizer

CHATML_STOP = "<|im_end|>"  # stop string for the ChatML fallback on models whose vocabulary lacks it


class NoChatTemplateWarning(UserWarning):
    """`chat` on a model without a chat template: the ChatML fallback may mean nothing to it (a base model)."""


def _stop_list(stop: str | Sequence[str]) -> list[str]:
    return [stop] if isinstance(stop, str) else list(stop)


class CompileProgress:
    """`progress(done, total)` for Model.warmup: one updating line on a terminal, plain lines otherwise."""

    LABEL = "llamba: compiling kernels for this CPU (once; cached for later runs)"

    def __init__(self, stream=None):
        self.stream = stream if stream is not None else sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()

    def __call__(self, done: int, total: int):
        if self.tty:
            self.stream.write(f"\r{self.LABEL}: {done}/{total}" + ("\n" if done >= total else ""))
        else:
            self.stream.write(f"{self.LABEL}: {done}/{total}\n")
        self.stream.flush()


class _Lock:
    """The LLM's lock: other threads wait for it; the thread that holds it (a suspended stream, a callback calling
    back in) gets an error instead of waiting for itself forever."""

    def __init__(self):
        self._lock, self._owner = threading.Lock(), None

    def __enter__(self):
        if self._owner == threading.get_ident():
            raise LlambaError("this LLM is already busy in this thread (a stream of it is suspended here, or a "
                              "callback called back into it): finish or close that stream first")
        self._lock.acquire()
        self._owner = threading.get_ident()

    def __exit__(self, *exc):
        self._owner = None
        self._lock.release()

    def locked(self) -> bool:
        return self._lock.locked()


class LLM:
    """A loaded model with its tokenizer, and one conversation over it (a KV cache and the prompt it holds);
    `session()` opens more conversations over the same weights (see Session).

    `model_path`: a GGUF path, a known model name (see `llamba list`) or None for the default model.
    `n_ctx`: context size in tokens (default: the model's, capped at 4096). `n_threads`: kernel threads
    (numba.set_num_threads, a per-thread setting: applied in whichever thread runs a generation).
    `seed`: default sampling seed for calls that pass none (None: a fresh random seed per call).
    `warmup`: run every kernel the model needs once at load (Model.warmup), so that a cold kernel cache compiles
    here, with a progress line on stderr (`k/N`, only when something compiles), and never during a generation;
    `load_seconds` and `warmup_seconds` time the two, and generation speeds never include them.
    `special`: default for the calls' `special` (print special tokens such as `<|im_end|>` as text).
    `verbose`: show the compile progress line. llama_cpp.Llama's conventions are accepted too (n_ctx=0, seed=-1,
    and its performance-only keywords such as n_batch: see completions.llama_init_args).
    `n_gpu_layers`, `main_gpu`: run the last layers on a GPU (llama.cpp's -ngl: past the layer count the output head
    too, -1 everything; needs `pip install -e ".[cuda]"`); `model.gpu` then says what went where.
    `type_k`, `type_v`: the KV cache's element types, "f16" (None: the default, as llama.cpp's), "f32" or "q8_0", or
    their GGML type numbers as llama_cpp.Llama takes them (1, 0, 8).
    `repack`: interleave the Q4_K / Q6_K matrices into memory on first use for the 16-row kernels, as llama.cpp's
    default repacking does (False: all weights stay memory-mapped, shared with other processes, slower).
    `context_shift`: default for the calls' `context_shift`: when the context fills during a generation, keep the
    first `n_keep` tokens (-1: the whole prompt; a leading BOS token is kept too), drop the oldest half of the rest
    and go on (llama.cpp's context shift, see Context.shift) instead of stopping with stop_reason "context".

    Sampling keywords of generate/stream/chat are the SamplingParams fields (temperature, top_k, top_p,
    min_p, repeat_penalty, repeat_last_n, frequency_penalty, presence_penalty, seed, logit_bias); temperature <= 0
    is greedy. Consecutive calls reuse the KV cache for the prompt prefix they share; the last prompt token is
    then evaluated alone, which rounds differently in the last bits than the same token inside a batch, so a
    sampled continuation can differ at a near-tie. `reset()` first makes a seeded call bit-for-bit repeatable.

    Thread safety: one lock per LLM serializes generate, stream, chat, logits and embed, so several threads
    may share an instance (calls run one after the other). Its sessions share the lock (and the model's activation
    buffers): calls on several sessions of one LLM run one after the other too. A stream holds the lock from its
    first piece until it is exhausted or closed; break out of the loop (or set the `cancel` event from another
    thread) to release it early. Calling the same LLM from inside a `callback` or a stream loop of the same
    thread raises LlambaError (it would wait for itself). tokenize/detokenize need no lock. Kernels release the
    GIL, so other Python threads keep running during generation.
    """

    def __init__(self, model_path: str | os.PathLike | None = None, n_ctx: int | None = None,
                 n_threads: int | None = None, seed: int | None = None, warmup: bool = True,
                 special: bool = False, verbose: bool = True, context_shift: bool = False, n_keep: int = 0,
                 n_gpu_layers: int = 0, main_gpu: int = 0, type_k: str | int | None = None,
                 type_v: str | int | None = None, repack: bool = True, **llama_kwargs):
        n_ctx, seed = completions.llama_init_args(n_ctx, seed, llama_kwargs)
        self.n_threads = check_threads(n_threads)
        self.path = registry.resolve_model(model_path)
        start = time.perf_counter()
        self.model = load_model(self.path, n_ctx, n_gpu_layers, main_gpu, type_k or "f16", type_v or "f16", repack)
        self.tokenizer = Tokenizer.from_gguf(self.model.gguf.metadata)
        self.load_seconds = time.perf_counter() - start
        self.warmup_seconds, self.kernels_compiled = 0.0, 0
        if warmup:
            start = time.perf_counter()
            self._set_threads()
            self.kernels_compiled = self.model.warmup(progress=CompileProgress() if verbose else None)
            self.warmup_seconds = time.perf_counter() - start
        start = time.perf_counter()
        self.model.repack()  # (the layers the warm-up ran are done already)
        self.load_seconds += time.perf_counter() - start
        self.seed, self.special, self.context_shift, self.n_keep = seed, special, context_shift, n_keep
        self._lock = _Lock()
        self._warned_template = False
        self._sessions = weakref.WeakSet()
        self._start_conversation()

    def _start_conversation(self):
        """The state a conversation owns: an LLM's, and each Session's own."""
        self.last_stats = GenerationStats()  # of the most recent generation
        self._ctx = Context(self.model)

    def session(self) -> "Session":
        """A new conversation over this LLM's model (its own KV cache and prompt), sharing the weights: see Session."""
        return Session(self)

    def close(self) -> None:
        """Free the KV caches (this LLM's and its sessions') and unmap the model file; later calls raise LlambaError.
        `with LLM(...) as llm:` closes it on leaving the block."""
        with self._lock:
            for s in list(self._sessions):
                s._ctx.close()
            self._ctx.close()
            self.model.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def n_ctx(self) -> int:
        return self.model.n_ctx

    @property
    def n_vocab(self) -> int:
        return self.model.n_vocab

    def tokenize(self, text: str, add_bos: bool | None = None, special: bool = True) -> list[int]:
        """Token ids of `text`; add_bos None follows the model; special=True parses special-token text."""
        return self.tokenizer.encode(text, add_bos=add_bos, special=special)

    def detokenize(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode([int(i) for i in ids])

    def reset(self) -> None:
        """Forget the cached prompt: the next call evaluates its whole prompt (as llama-cpp-python's reset)."""
        with self._lock:
            self._ctx.tokens = []

    def logits(self, ids: Sequence[int]) -> np.ndarray:
        """Logits (n, n_vocab) float32 of every position of `ids`, run from an empty context."""
        with self._lock:
            self._set_threads()
            return self._ctx.eval_all(ids)

    def _set_threads(self):
        if self.n_threads is not None:
            set_threads(self.n_threads)

    def sampling_params(self, sampling: SamplingParams | None = None, **kwargs) -> SamplingParams:
        """SamplingParams from keywords (over `sampling` or the defaults); the LLM's seed when none is given."""
        fields = {**(vars(sampling) if sampling is not None else {}), **kwargs}
        if fields.get("seed") is None:
            fields["seed"] = self.seed
        params = SamplingParams(**fields)
        if params.logit_bias and params.logit_bias[-1][0] >= self.n_vocab:  # pairs sorted by id
            raise ValueError(f"logit_bias token id {params.logit_bias[-1][0]} is outside the vocabulary "
                             f"(0..{self.n_vocab - 1})")
        return params

    def stream(self, prompt: str | Sequence[int], max_tokens: int | None = 256, *, stop: str | Sequence[str] = (),
               cancel=None, sampling: SamplingParams | None = None, special: bool | None = None, grammar=None,
               on_token: Callable[[int, np.ndarray], None] | None = None, stats: GenerationStats | None = None,
               context_shift: bool | None = None, **kwargs) -> Iterator[str]:
        """Iterator of text pieces continuing `prompt` (text, or token ids used as given).

        Stops at an end-of-generation token, `max_tokens` (None: until the context is full), a `stop`
        string (never included), when `cancel.is_set()` (e.g. a threading.Event), or when the caller
        breaks out. Special tokens are left out of the text unless `special` (None: the LLM's default). A full
        context stops it, or is shifted with `context_shift` (None: the LLM's default).
        `grammar` constrains the text to a language and stops when it is complete: a runtime.grammar.Grammar
        (`Grammar.from_json_schema(schema)`, `Grammar.json_object()`, `Grammar.from_lark(text)`,
        `Grammar.from_string(gbnf)`) or a GBNF string (llama.cpp's format); invalid ones raise GrammarError.
        `on_token(token, logits)` sees each generated token with the raw logits it was sampled from (see
        generate). Statistics land in `self.last_stats` (and in `stats` when given, which no other call replaces).
        """
        params = self.sampling_params(sampling, **kwargs)
        ids = self.tokenize(prompt) if isinstance(prompt, str) else [int(i) for i in prompt]
        self._ctx.check_fits(len(ids))  # fail at the call, not at the first piece
        special = self.special if special is None else special
        constraint = None
        if grammar is not None:
            from .grammar import as_constraint  # llguidance is imported only when a call constrains its output

            constraint = as_constraint(grammar, self.tokenizer)
        shift = self.context_shift if context_shift is None else context_shift
        return self._stream(ids, max_tokens, Sampler(params, constraint), _stop_list(stop), cancel, special, on_token,
                            stats, self.n_keep if shift else None)

    def _stream(self, ids, max_tokens, sampler, stop, cancel, special, on_token, stats, n_keep) -> Iterator[str]:
        with self._lock:
            self._set_threads()
            self.last_stats = stats if stats is not None else GenerationStats()
            yield from generate(self._ctx, self.tokenizer, ids, max_tokens, sampler, stop, cancel,
                                self.last_stats, special, on_token, n_keep)

    def generate(self, prompt: str | Sequence[int], max_tokens: int | None = 256, *, stop: str | Sequence[str] = (),
                 cancel=None, callback: Callable[[str], None] | None = None,
                 sampling: SamplingParams | None = None, special: bool | None = None, grammar=None, **kwargs) -> str:
        """The generated text (see `stream`); `callback(piece)` sees each piece as it is produced."""
        pieces = []
        for piece in self.stream(prompt, max_tokens, stop=stop, cancel=cancel, sampling=sampling, special=special,
                                 grammar=grammar, **kwargs):
            pieces.append(piece)
            if callback is not None:
                callback(piece)
        return "".join(pieces)

    def chat_prompt(self, messages: Sequence[dict], add_generation_prompt: bool = True,
                    tools: Sequence[dict] | None = None) -> str:
        """`messages` rendered with the model's chat template (ChatML when it has none); `tools` (function
        schemas, [{'type': 'function', 'function': {...}}, ...]) reach the template as transformers passes them."""
        from .chat import render, template_variables  # Jinja2 is imported only when a chat needs it

        return render(list(messages), self.tokenizer.chat_template, add_generation_prompt=add_generation_prompt,
                      tools=tools, **template_variables(self.model.gguf.metadata))

    def chat(self, messages: Sequence[dict], stream: bool = False, max_tokens: int | None = 256, *,
             stop: str | Sequence[str] = (), cancel=None, sampling: SamplingParams | None = None,
             special: bool | None = None, grammar=None, **kwargs) -> str | Iterator[str]:
        """The assistant's reply to `messages` ([{'role': 'user', 'content': ...}, ...]): a string, or an
        iterator of pieces when stream=True. Other arguments as in `stream`."""
        ids, stop = self._chat_input(messages, stop)
        call = self.stream if stream else self.generate
        return call(ids, max_tokens, stop=stop, cancel=cancel, sampling=sampling, special=special, grammar=grammar,
                    **kwargs)

    def _chat_input(self, messages, stop, tools=None) -> tuple[list[int], list[str]]:
        """The prompt ids of `messages` and the stop strings (ChatML's end tag added when the model has no template,
        with a warning the first time)."""
        text = self.chat_prompt(messages, tools=tools)
        ids = self.tokenize(text, add_bos=self._chat_bos(text))
        if not self.tokenizer.chat_template and not self._warned_template:
            self._warned_template = True
            warnings.warn(f"{self.path.name} has no chat template (a base model?): using ChatML, which it may not "
                          "follow", NoChatTemplateWarning, stacklevel=3)
        return ids, _stop_list(stop) + ([] if self.tokenizer.chat_template else [CHATML_STOP])

    def _chat_bos(self, text: str) -> bool | None:
        """No BOS token when the template already wrote one (as llama.cpp does); else the model's default."""
        from .chat import template_variables

        bos = template_variables(self.model.gguf.metadata)["bos_token"]
        return False if bos and text.startswith(bos) else None

    # llama-cpp-python's high-level calls, OpenAI-shaped dicts (runtime/completions.py), and asyncio versions
    # whose kernels run in a worker thread, cancelled with the awaiting task (runtime/aio.py)
    create_completion = __call__ = completions.create_completion
    create_chat_completion = completions.create_chat_completion
    acreate_completion = aio.acreate_completion
    acreate_chat_completion = aio.acreate_chat_completion
    astream = aio.astream

    def save_state(self, path: str | os.PathLike | None = None) -> SessionState:
        """A snapshot of this conversation, its token ids and their KV cache entries (llama-cpp-python's save_state),
        also written to `path` when given; load_state resumes from it (see runtime/state.py)."""
        with self._lock:
            snapshot = state.capture(self._ctx, self.path.name)
        if path is not None:
            snapshot.save(path)
        return snapshot

    def load_state(self, src: SessionState | str | os.PathLike) -> None:
        """Resume the conversation saved in `src` (a save_state() result or a file it wrote) from the same model and
        n_ctx: a next prompt extending its tokens reuses their K/V. LlambaError for another model's or n_ctx's
        state, or a damaged file."""
        snapshot = src if isinstance(src, SessionState) else SessionState.load(src)
        with self._lock:
            state.restore(self._ctx, snapshot)

    def embed(self, texts: str | Sequence[str], pooling: str | None = None, normalize: bool = True) -> np.ndarray:
        """Embeddings (n, n_embd) float32 of `texts`, (n_embd,) of one string: final hidden states pooled 'mean',
        'cls' or 'last' (None: the model's `{arch}.pooling_type`, else mean), unit-norm with normalize. The
        conversation's cache is left as it is. See runtime/embeddings.py."""
        return embeddings.embed(self, texts, pooling, normalize)

    def create_embedding(self, input: str | Sequence[str], model: str | None = None) -> dict:
        """OpenAI's (and llama-cpp-python's) embeddings response for `input`: {"object": "list", "data": [{"object":
        "embedding", "index": i, "embedding": [...]}], "model": ..., "usage": {...}}, unit-norm vectors."""
        return embeddings.create_embedding(self, input, model)


class Session(LLM):
    """An independent conversation over an LLM's loaded model: its own KV cache and prompt-prefix cache, and the
    LLM's weights, tokenizer and lock, so several chats stay open without loading the model again. Calls on the
    sessions of one LLM (and on the LLM) run one after the other: they share the model's activation buffers.

    A Session has every method of LLM and starts with the LLM's defaults (seed, special, context_shift, n_keep);
    `close()` frees only its own KV cache; closing the LLM closes its sessions too. Open one with `llm.session()`.
    """

    def __init__(self, llm: LLM):  # not LLM.__init__: the model is loaded already
        vars(self).update(vars(llm))  # shared: model, tokenizer, lock; copied: the defaults
        self._start_conversation()
        self._sessions.add(self)

    def own_lock(self) -> None:
        """Give this session a lock of its own, so that it generates while other sessions do: for a caller that
        serializes the model's forward passes itself (the server's batch scheduler, runtime/server/batching.py)."""
        self._lock = _Lock()

    def close(self) -> None:
        """Free this session's KV cache; its later calls raise LlambaError (the LLM and other sessions go on)."""
        with self._lock:
            self._ctx.close()
