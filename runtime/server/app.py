"""The OpenAI-compatible HTTP API (FastAPI): routes, authentication, CORS, limits and OpenAI-shaped errors.

Every route validates its body (schemas.py), takes a slot from the engine (engine.py: a bounded queue in front
of `-np` sequence slots; full: 503 with Retry-After) and runs the llama-cpp-python-shaped calls of
runtime/completions.py off the event loop. Streams are Server-Sent Events ending with `data: [DONE]`; a client that
disconnects cancels its sequence. Errors are `{"error": {"message", "type", "param", "code"}}` with 4xx for bad
requests; an unexpected failure is a 500 of the same shape, its traceback only in the server's log.
"""

import base64
import json
import logging
import secrets
import time
from pathlib import Path

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import ContextOverflowError, LlambaError
from .engine import Busy, Engine
from .schemas import ChatRequest, CompletionRequest, DetokenizeRequest, EmbeddingRequest, TokenizeRequest

log = logging.getLogger("llamba.server")
STATIC = Path(__file__).parent / "static"
MAX_BODY_BYTES = 8 << 20


def error(status: int, message: str, kind: str = "invalid_request_error", param=None, code=None,
          headers=None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}}, status,
                        headers=headers)


def create_app(engine: Engine, api_key: str | None = None, cors_origin: str | None = None,
               model_name: str | None = None) -> FastAPI:
    app = FastAPI(title="llamba", docs_url=None, redoc_url=None, openapi_url=None)
    model_id = model_name or engine.model_id
    created = int(time.time())
    if cors_origin:
        app.add_middleware(CORSMiddleware, allow_origins=[cors_origin], allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])

    @app.middleware("http")
    async def guard(request: Request, call_next):
        if request.method == "OPTIONS":  # CORS preflight (answered by the CORS middleware when enabled)
            return await call_next(request)
        if api_key and request.url.path not in ("/", "/health"):
            given = request.headers.get("authorization", "")
            if not secrets.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
                return error(401, "invalid or missing API key (Authorization: Bearer KEY)", "authentication_error",
                             code="invalid_api_key")
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
            return error(413, f"request body larger than {MAX_BODY_BYTES} bytes")
        return await call_next(request)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or None
        message = first.get("msg", "invalid request")
        if first.get("type") == "json_invalid":
            message = "the request body is not valid JSON"
        return error(400, f"{where}: {message}" if where else message, param=where)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return error(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}", kind)

    @app.exception_handler(LlambaError)
    async def bad_input(request: Request, exc: LlambaError):
        code = "context_length_exceeded" if isinstance(exc, ContextOverflowError) else None
        return error(400, str(exc), code=code)

    @app.exception_handler(Busy)
    async def busy(request: Request, exc: Busy):
        return error(503, str(exc), "server_busy", headers={"Retry-After": str(exc.retry_after)})

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception):
        log.exception("internal error on %s %s", request.method, request.url.path)
        return error(500, f"internal error: {type(exc).__name__}", "server_error")

    @app.get("/health")
    async def health():
        sched = engine.scheduler
        return {"status": "ok", "slots_idle": engine.idle, "slots_processing": engine.busy_slots,
                "decode_steps": sched.steps, "decoded_tokens": sched.batched_tokens}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model_id, "object": "model", "created": created,
                                            "owned_by": "llamba"}]}

    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest, request: Request):
        return await _run(request, body, "create_chat_completion")

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        return await _run(request, body, "create_completion")

    @app.post("/v1/embeddings")
    async def embeddings(body: EmbeddingRequest):
        result = await engine.call(engine.embed, body.input)
        if body.encoding_format == "base64":
            for item in result["data"]:
                item["embedding"] = base64.b64encode(np.asarray(item["embedding"], "<f4").tobytes()).decode()
        return {**result, "model": model_id}

    @app.post("/tokenize")
    async def tokenize(body: TokenizeRequest):
        ids = engine.llm.tokenize(body.content, add_bos=body.add_special, special=True)
        if body.with_pieces:
            return {"tokens": [{"id": i, "piece": engine.llm.detokenize([i])} for i in ids]}
        return {"tokens": ids}

    @app.post("/detokenize")
    async def detokenize(body: DetokenizeRequest):
        bad = [i for i in body.tokens if not 0 <= i < engine.llm.n_vocab]
        if bad:
            return error(400, f"token ids must lie in 0..{engine.llm.n_vocab - 1}, got {bad[:5]}", param="tokens")
        return {"content": engine.llm.detokenize(body.tokens)}

    @app.get("/")
    async def index():
        return FileResponse(STATIC / "index.html", media_type="text/html")

    async def _run(request: Request, body, call: str):
        kwargs = {**body.completion_kwargs(), "model": model_id}
        if not body.stream:
            async with engine.slot() as session:
                return await engine.call(getattr(session, call), disconnected=request.is_disconnected, **kwargs)
        slot = engine.slot()
        session = await slot.__aenter__()  # a full queue is a 503 here, before the stream starts
        chunks = None
        try:
            chunks = engine.stream(getattr(session, call), **kwargs)
            first = await anext(chunks, None)  # bad input fails here, as an error response, not inside the stream
        except BaseException:
            if chunks is not None:
                await chunks.aclose()
            await slot.__aexit__(None, None, None)
            raise
        return StreamingResponse(_sse(first, chunks, slot), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    return app


async def _sse(first, chunks, slot):
    """`data: {chunk}` events, then `data: [DONE]`; the slot is freed at the end, also when the client goes away
    (the generator is closed, which cancels the sequence)."""
    try:
        chunk = first
        while chunk is not None:
            yield f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"
            chunk = await anext(chunks, None)
        yield "data: [DONE]\n\n"
    finally:
        await chunks.aclose()
        await slot.__aexit__(None, None, None)
