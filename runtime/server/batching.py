"""Continuous batching: the decode steps of every busy slot run as one forward pass over the shared weights.

Each request generates in its own worker thread with the ordinary decode loop (runtime/generate.py: sampling,
stop strings, logprobs, grammars stay per request); only its session's forward passes go through the Scheduler:
- a prompt is evaluated alone, in chunks of PREFILL_CHUNK tokens, so that other slots' decode steps run between
  its chunks instead of waiting for the whole prompt;
- a decode step (one token) waits for the steps of the sessions that took part in the previous one (they sample,
  then come back), at most GATHER_SECONDS; then one of the waiting threads runs them all as one
  `Model.forward_batch`: the weights are read once per step for every sequence, each sequence attending over its
  own KV cache at its own position. A session fresh from its prompt joins the next step.
A new request joins between steps, a finished one leaves (`release`). Greedy output does not depend on the
company a request keeps: a batched row is computed exactly as a single token is.
"""

import threading
import time

import numpy as np

from ..generate import Context

PREFILL_CHUNK = 256
GATHER_SECONDS = 0.05  # how long a step waits for a session that took part in the previous one


class _Step:
    """One session's pending decode step and, once run, its logits (n_vocab,) or error."""

    def __init__(self, ctx, token: int):
        self.ctx, self.token, self.pos = ctx, token, len(ctx.tokens)
        self.since = time.monotonic()
        self.logits = self.error = None


class Scheduler:
    def __init__(self, model):
        self.model = model
        self.model_lock = threading.Lock()  # one forward pass at a time (the model's activation buffers)
        self._cond = threading.Condition()
        self._pending: list[_Step] = []
        self._running = False  # a decode step is running (its thread runs it; new steps gather meanwhile)
        self._expect = set()  # contexts that took part in the last step and have not sent their next one
        self.steps = self.batched_tokens = 0  # decode forward passes run, and the tokens they carried

    def bind(self, session):
        """Route the session's forward passes through this scheduler; its own lock replaces the LLM's (the
        scheduler serializes the forward passes), so the sessions of one LLM generate concurrently."""
        session._ctx = BatchedContext(session._ctx, self)
        session.own_lock()
        return session

    def release(self, session) -> None:
        """The session's request is over: batches stop waiting for it."""
        with self._cond:
            self._expect.discard(session._ctx)
            self._cond.notify_all()

    # -- called from the sessions' worker threads --

    def prefill(self, ctx, ids: np.ndarray, pos: int) -> np.ndarray:
        """Logits (n_vocab,) after evaluating `ids` at positions pos.. in ctx's cache, chunk by chunk."""
        for start in range(0, ids.size, PREFILL_CHUNK):
            with self.model_lock:
                logits = self.model.forward(ids[start:start + PREFILL_CHUNK], pos + start, ctx.cache)
        return logits

    def decode(self, ctx, token: int) -> np.ndarray:
        step = _Step(ctx, token)
        with self._cond:
            self._expect.discard(ctx)
            self._pending.append(step)
            self._cond.notify_all()
            while step.logits is None and step.error is None:
                batch = [] if self._running else self._take_batch()
                if batch:  # this thread runs the step for everyone in it; the others gather the next one
                    self._running = True
                    self._cond.release()
                    try:
                        self._run(batch)
                    finally:
                        self._cond.acquire()
                        self._running = False
                        self._expect.update(s.ctx for s in batch if s.error is None)
                        self._cond.notify_all()
                elif not self._running and self._pending:  # gathering: wake when the oldest step has waited enough
                    self._cond.wait(max(0.0, self._pending[0].since + GATHER_SECONDS - time.monotonic()))
                else:  # a step is running: its end (or a new step) notifies
                    self._cond.wait()
        if step.error is not None:
            raise step.error
        return step.logits

    def _take_batch(self) -> list:
        """The pending steps, once every session of the previous step has sent its next or left, or the oldest
        pending step waited GATHER_SECONDS."""
        if self._pending and (not self._expect or time.monotonic() - self._pending[0].since >= GATHER_SECONDS):
            batch, self._pending = self._pending, []
            return batch
        return []

    def _run(self, batch: list) -> None:
        size = self.model.sgemm_tokens - 1  # forward_batch's exact regime
        for i in range(0, len(batch), size):
            group = batch[i:i + size]
            tokens = np.array([s.token for s in group], np.int32)  # (m,)
            try:
                with self.model_lock:
                    logits = self.model.forward_batch(tokens, [s.pos for s in group], [s.ctx.cache for s in group])
            except Exception as e:  # each waiting request raises it
                for s in group:
                    s.error = e
                continue
            self.steps += 1
            self.batched_tokens += len(group)
            for s, row in zip(group, logits, strict=True):  # logits (m, n_vocab)
                s.ctx.tokens.append(s.token)
                s.logits = row


class BatchedContext(Context):
    """A session's Context whose forward passes go through a Scheduler."""

    def __init__(self, ctx: Context, scheduler: Scheduler):
        self.__dict__.update(ctx.__dict__)  # the same cache and tokens
        self.scheduler = scheduler

    def _forward(self, ids, pos: int, all_logits: bool = False) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int32)
        if all_logits:
            with self.scheduler.model_lock:
                return self.model.forward(ids, pos, self.cache, all_logits=True)
        return self.scheduler.prefill(self, ids, pos)

    def append(self, token: int) -> np.ndarray:
        return self.scheduler.decode(self, int(token))
