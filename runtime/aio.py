"""asyncio versions of LLM's calls: `astream`, `acreate_completion`, `acreate_chat_completion`.

    async for piece in llm.astream("Once upon a time", 32):
        print(piece, end="")
    reply = await llm.acreate_chat_completion([{"role": "user", "content": "Hi!"}])

The kernels run in a worker thread that feeds an asyncio queue, so the event loop stays free while the model
generates. Cancelling the task that awaits (or closing the async iterator, as `break` in `async for` does once it is
collected) sets the generation's cancel event and waits for the worker, which stops before its next token: the
LLM's lock is free when the cancellation has propagated (a prompt batch in progress is finished first).
"""

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import aclosing, closing

from . import completions


def astream(llm, prompt, max_tokens: int | None = 256, **kwargs) -> AsyncIterator[str]:
    """LLM.stream's text pieces as an async iterator; its arguments are checked here, at the call."""
    cancel = threading.Event()
    return in_thread(llm.stream(prompt, max_tokens, cancel=cancel, **kwargs), cancel)


async def acreate_completion(llm, *args, stream: bool = False, **kwargs):
    """create_completion's dict, or with stream=True an async iterator of its chunks."""
    return await _create(completions.create_completion, llm, args, kwargs, stream)


async def acreate_chat_completion(llm, *args, stream: bool = False, **kwargs):
    """create_chat_completion's dict, or with stream=True an async iterator of its chunks."""
    return await _create(completions.create_chat_completion, llm, args, kwargs, stream)


async def _create(create, llm, args, kwargs, stream: bool):
    cancel = threading.Event()
    if stream:
        return in_thread(create(llm, *args, stream=True, cancel=cancel, **kwargs), cancel)
    async with aclosing(in_thread(called(create, llm, *args, cancel=cancel, **kwargs), cancel)) as results:
        async for result in results:
            return result


def called(function, *args, **kwargs) -> Iterator:
    """function(*args, **kwargs) as the one item of an iterator, so that it runs where the iterator is iterated."""
    yield function(*args, **kwargs)


async def in_thread(items: Iterator, cancel: threading.Event) -> AsyncIterator:
    """`items` (a generator that stops once `cancel` is set) iterated in a worker thread, as an async iterator.
    Leaving it early, by cancellation or by closing it, sets `cancel` and waits until the worker has stopped."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    stopped = loop.create_future()

    def call_in_loop(function, *args):
        try:
            loop.call_soon_threadsafe(function, *args)
        except RuntimeError:  # the event loop is closed: nobody listens any more
            cancel.set()

    def work():
        try:
            with closing(items):
                for item in items:
                    call_in_loop(queue.put_nowait, ("item", item))
            call_in_loop(queue.put_nowait, ("end", None))
        except Exception as e:  # raised in the awaiting task instead
            call_in_loop(queue.put_nowait, ("error", e))
        finally:
            call_in_loop(stopped.set_result, None)

    threading.Thread(target=work, name="llamba-generate", daemon=True).start()
    try:
        while True:
            kind, value = await queue.get()
            if kind == "end":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        cancel.set()
        await asyncio.shield(stopped)
