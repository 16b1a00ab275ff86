"""The server's engine: `-np` sequence slots over one loaded model, and a bounded queue in front of them.

Each slot is a session of the LLM (its own KV cache and prompt-prefix cache over the shared memory-mapped weights),
bound to the batch scheduler (batching.py) so that the decode steps of all busy slots run as one forward pass. A
request takes the free slot used last (a conversation that goes on finds its prompt prefix cached there), or waits
in the queue; when `max_queue`
requests already wait, it is refused at once (`Busy`: the server answers 503 with Retry-After). The calls run in
worker threads (runtime/aio.py): the event loop never waits for the model.
"""

import asyncio
import threading
from contextlib import asynccontextmanager

from .. import aio
from .batching import Scheduler


class Busy(Exception):
    """Every slot is busy and the queue is full."""

    def __init__(self, waiting: int, retry_after: int = 1):
        super().__init__(f"the server is busy: all slots are processing and {waiting} requests are waiting; "
                         f"retry in {retry_after} s")
        self.retry_after = retry_after


class Engine:
    def __init__(self, llm, n_parallel: int = 1, max_queue: int = 16):
        self.llm, self.model_id = llm, llm.path.stem
        self.scheduler = Scheduler(llm.model)
        self.slots = [self.scheduler.bind(llm.session()) for _ in range(n_parallel)]
        self.max_queue = max_queue
        self._free = list(self.slots)
        self._waiting = 0
        self._cond: asyncio.Condition | None = None

    @property
    def idle(self) -> int:
        return len(self._free)

    @property
    def busy_slots(self) -> int:
        return len(self.slots) - len(self._free)

    @asynccontextmanager
    async def slot(self):
        """A free session for one request, waiting in the bounded queue for one if needed (Busy when it is full)."""
        if self._cond is None:
            self._cond = asyncio.Condition()
        async with self._cond:
            if not self._free and self._waiting >= self.max_queue:
                raise Busy(self._waiting)
            self._waiting += 1
            try:
                await self._cond.wait_for(lambda: self._free)
            finally:
                self._waiting -= 1
            session = self._free.pop()
        try:
            yield session
        finally:
            self.scheduler.release(session)
            async with self._cond:
                self._free.append(session)
                self._cond.notify()

    async def call(self, function, *args, disconnected=None, **kwargs):
        """function(*args, cancel=event, **kwargs) in a worker thread; cancelled (the event set) when the
        awaiting task is, or when `disconnected()` (the client went away) turns true."""
        cancel = threading.Event()
        results = aio.in_thread(aio.called(function, *args, cancel=cancel, **kwargs), cancel)
        task = asyncio.ensure_future(anext(results))
        try:
            while not task.done():
                await asyncio.wait([task], timeout=0.25)
                if disconnected is not None and not task.done() and await disconnected():
                    cancel.set()
            return task.result()
        finally:
            await results.aclose()

    def embed(self, texts, cancel=None) -> dict:
        """The LLM's create_embedding, its forward passes between the sessions' (they share the model's buffers);
        `cancel` (from `call`) is not checked: a batch of embeddings runs to its end."""
        with self.scheduler.model_lock:
            return self.llm.create_embedding(texts)

    def stream(self, function, **kwargs):
        """function(stream=True, cancel=event, **kwargs)'s chunks as an async iterator (closing it cancels)."""
        cancel = threading.Event()
        return aio.in_thread(function(cancel=cancel, **kwargs), cancel)
