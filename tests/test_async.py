"""asyncio calls (runtime/aio.py): the same results as the blocking calls, an event loop that keeps running
while the model generates, and cancellation that stops the generation and frees the LLM for the next call."""

import asyncio
import time

import pytest

from runtime import LLM, LlambaError

PROMPT = "Once upon a time"


@pytest.fixture(scope="module")
def llm(model_path):
    return LLM(model_path("smollm2-135m-instruct"), n_ctx=256, n_threads=1, verbose=False)


def run(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, 300))


def test_same_results_as_the_blocking_calls(llm):
    llm.reset()
    expected = list(llm.stream(PROMPT, 8, temperature=0))
    messages = [{"role": "user", "content": "Hi"}]
    llm.reset()
    chat = llm.create_chat_completion(messages, max_tokens=6, temperature=0)

    async def main():
        llm.reset()
        pieces = [piece async for piece in llm.astream(PROMPT, 8, temperature=0)]
        llm.reset()
        completion = await llm.acreate_completion(PROMPT, max_tokens=8, temperature=0)
        llm.reset()
        chunks = [c async for c in await llm.acreate_chat_completion(messages, max_tokens=6, temperature=0,
                                                                       stream=True)]
        return pieces, completion, chunks

    pieces, completion, chunks = run(main())
    assert pieces == expected and completion["choices"][0]["text"] == "".join(expected)
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == \
        chat["choices"][0]["message"]["content"]
    assert not llm._lock.locked()


def test_event_loop_keeps_running(llm):
    async def main():
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.005)

        task = asyncio.create_task(ticker())
        start = time.perf_counter()
        await llm.acreate_completion(PROMPT, max_tokens=16, temperature=0)
        elapsed = time.perf_counter() - start
        task.cancel()
        return ticks, elapsed

    ticks, elapsed = run(main())
    assert ticks >= 0.3 * elapsed / 0.005  # the loop ticked through the generation (a blocked loop: ~1 tick)


@pytest.mark.parametrize("stream", [True, False])
def test_cancelling_the_task_stops_and_frees_the_llm(llm, stream):
    async def consume():
        if stream:
            async for _ in await llm.acreate_completion(PROMPT, max_tokens=200, temperature=0, stream=True):
                pass
        else:
            await llm.acreate_completion(PROMPT, max_tokens=200, temperature=0)

    async def main():
        task = asyncio.create_task(consume())
        while llm.last_stats.n_generated < 3 or not llm._lock.locked():  # generating
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not llm._lock.locked()  # free once the cancellation has propagated
        stats = llm.last_stats
        follow = await llm.acreate_completion(PROMPT, max_tokens=2, temperature=0)  # the next call works
        return stats, follow

    llm.reset()
    stats, follow = run(main())
    assert stats.stop_reason == "cancelled" and stats.n_generated < 200
    assert follow["usage"]["completion_tokens"] == 2


def test_closing_an_async_stream_and_errors(llm):
    async def main():
        stream = llm.astream(PROMPT, 100, temperature=0)
        async for _ in stream:
            break
        await stream.aclose()
        assert not llm._lock.locked() and llm.last_stats.stop_reason == "cancelled"
        with pytest.raises(LlambaError, match="typical_p"):  # raised in the worker, re-raised here
            await llm.acreate_completion(PROMPT, typical_p=0.5)
        with pytest.raises(LlambaError, match="typical_p"):  # checked at the call
            await llm.acreate_completion(PROMPT, typical_p=0.5, stream=True)

    run(main())
    assert not llm._lock.locked()
