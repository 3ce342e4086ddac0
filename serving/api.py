"""The HTTP API (FastAPI): OpenAI-compatible completions and chat, models, health and metrics.

    POST /v1/completions        prompt -> text (SSE when `stream`), `logprobs`, `n`, `stop`, ...
    POST /v1/chat/completions   messages of text, image_url and input_audio parts -> text, or a
                                PNG when `modalities: ["image"]`
    GET  /v1/models             the one model served
    GET  /health                200 once warmed up, 503 before
    GET  /metrics               Prometheus: queue depth, slots in use, TTFT, time per token, tokens

Every error is an OpenAI error object {"error": {"message", "type", "param", "code"}} with a 4xx
for what the caller got wrong (429 + Retry-After when the queue is full). A client that
disconnects cancels its request and frees its slot; so does the request timeout. With
`api_key` set every route but /health wants `Authorization: Bearer <key>`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import json
import secrets
import threading
import time
from typing import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from serving.media import BadInput
from serving.prompts import Prompt, chat_prompt, completion_prompts
from serving.scheduler import QueueFull, SchedulerDown, Token
from serving.scheduler import Request as EngineRequest
from serving.schemas import ChatRequest, CompletionRequest, describe_error
from serving.text_stream import TextStream


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error", headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind, self.headers = status, message, param, code, kind, headers


class Guard:
    """Pure ASGI middleware in front of every route: the API key, the body limit, the request count.

    The key: with `server.api_key` set, every route but /health wants `Authorization: Bearer KEY`.
    The body is read up to `serve.max_body_bytes` before the app sees it, counting what arrives
    (not trusting Content-Length), so chunked uploads are bounded too, and within
    `serve.body_timeout_s` (408 past it: a client that sends a byte now and then holds nothing
    for long); then it is replayed to the app;
    later receives pass through, so disconnects are still seen. Pure ASGI rather than Starlette's
    BaseHTTPMiddleware, which relays every streamed chunk through an extra task.
    """

    def __init__(self, app, server):
        self.app, self.server = app, server
        self.routes: set[str] | None = None

    def _route(self, scope) -> str:
        """The metrics label: a route the app serves, else "unmatched" (never the raw path, which a
        client picks: a label per path would grow /metrics without bound)."""
        if self.routes is None:
            self.routes = {route.path for route in scope["app"].routes}
        return scope["path"] if scope["path"] in self.routes else "unmatched"

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        route, metrics = self._route(scope), self.server.metrics

        async def counted_send(message):
            if message["type"] == "http.response.start":
                metrics.requests.labels(route, str(message["status"])).inc()
            await send(message)

        key = self.server.api_key
        if route != "/health" and key is not None:
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, f"Bearer {key}".encode()):
                response = error_response(401, "missing or wrong API key: send `Authorization: Bearer <key>`",
                                          code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
                return await response(scope, receive, counted_send)
        chunks, size, more = [], 0, True
        deadline = asyncio.get_running_loop().time() + self.server.cfg.serve.body_timeout_s
        while more:
            try:
                message = await asyncio.wait_for(receive(), deadline - asyncio.get_running_loop().time())
            except TimeoutError:
                response = error_response(408, f"the request body did not arrive within serve.body_timeout_s="
                                          f"{self.server.cfg.serve.body_timeout_s} s", code="body_timeout",
                                          headers={"Connection": "close"})
                return await response(scope, receive, counted_send)
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.server.max_body_bytes:
                response = error_response(413, f"request body is over the {self.server.max_body_bytes} byte limit "
                                          "(serve.max_body_bytes)", code="body_too_large")
                return await response(scope, receive, counted_send)
            more = message.get("more_body", False)
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        await self.app(scope, replay, counted_send)


def error_response(status: int, message: str, param=None, code=None, kind="invalid_request_error", headers=None):
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


@dataclasses.dataclass
class Choice:
    """One generated reply: its engine request, its text so far, its tokens and how it ended."""

    index: int
    prompt: Prompt
    request: EngineRequest | None = None
    stream: TextStream | None = None
    tokens: list[Token] = dataclasses.field(default_factory=list)
    finish_reason: str | None = None


class Handoff:
    """Events from the scheduler thread into the event loop, one wake-up for a whole step's worth.

    The scheduler delivers a token to every slot at each step; a `call_soon_threadsafe` per token
    wakes the loop (a write to its self-pipe) 32 times a step at batch 32. Here the first event
    of a batch schedules one drain and the rest join it.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop, self.lock = loop, threading.Lock()
        self.pending: list[tuple[asyncio.Queue, object]] = []

    def put(self, queue: asyncio.Queue, item) -> None:  # any thread
        with self.lock:
            self.pending.append((queue, item))
            first = len(self.pending) == 1
        if first:
            self.loop.call_soon_threadsafe(self._drain)

    def _drain(self) -> None:  # the loop's thread
        with self.lock:
            pending, self.pending = self.pending, []
        for queue, item in pending:
            queue.put_nowait(item)


class Generation:
    """The choices of one HTTP request, fed by the scheduler thread into this event loop.

    The request timeout is an event too: a timer puts it in the same queue, so waiting for the
    next token needs no timeout of its own (a task and a timer per token otherwise).
    """

    def __init__(self, server, handoff: Handoff, prompts: list[Prompt], body):
        self.server, self.handoff, self.body = server, handoff, body
        self.events: asyncio.Queue = asyncio.Queue()
        self.deadline: asyncio.TimerHandle | None = None
        self.choices: list[Choice] = []
        seed = body.seed if body.seed is not None else secrets.randbits(32)
        for prompt in prompts:
            for _ in range(body.n):
                index = len(self.choices)
                params = dataclasses.replace(prompt.params, seed=seed + index)
                choice = Choice(index, dataclasses.replace(prompt, params=params))
                choice.stream = TextStream(server.reply_text, body.stop_strings() if prompt.kind == "text" else ())
                self.choices.append(choice)

    def submit(self) -> None:
        timeout = self.server.cfg.serve.request_timeout_s
        self.deadline = asyncio.get_running_loop().call_later(timeout, self.events.put_nowait, (None, None))
        for choice in self.choices:
            emit = (lambda index: lambda event: self.handoff.put(self.events, (index, event)))
            choice.request = EngineRequest(choice.prompt.ids, choice.prompt.params, emit(choice.index))
            try:
                self.server.scheduler.submit(choice.request)
            except QueueFull as error:
                self.cancel()
                raise ApiError(429, f"the server is busy: {error}; retry shortly", code="queue_full",
                               kind="rate_limit_error", headers={"Retry-After": "1"}) from None
            except SchedulerDown as error:
                self.cancel()
                raise ApiError(503, f"the scheduler has stopped ({error}); the server must be restarted",
                               code="scheduler_down", kind="server_error") from None

    def cancel(self, reason: str = "cancelled") -> None:
        if self.deadline is not None:
            self.deadline.cancel()
        for choice in self.choices:
            if choice.request is not None and not choice.request.finished:
                self.server.scheduler.cancel(choice.request, reason)

    async def next(self) -> tuple[Choice, str, bool] | None:
        """The next event as (choice, new text, finished?), or None for a token that came after its
        choice stopped (it was in flight when a stop string ended the choice)."""
        index, event = await self.events.get()
        if index is None:
            raise _timed_out(self.server)
        choice = self.choices[index]
        if isinstance(event, Token):
            if choice.finish_reason is not None or choice.stream.stopped:
                return None
            choice.tokens.append(event)
            text = choice.stream.push(event.id) if choice.prompt.kind == "text" else ""
            if choice.stream.stopped:
                self.server.scheduler.cancel(choice.request, "stop")
            return choice, text, False
        if event.reason == "error":
            raise ApiError(500, f"generation failed: {event.error}", kind="server_error")
        choice.finish_reason = "stop" if event.reason in ("stop", "cancelled") and choice.stream.stopped else event.reason
        text = choice.stream.finish() if choice.prompt.kind == "text" else ""
        return choice, text, True

    def usage(self) -> dict:
        prompt = sum(len(c.prompt.ids) for c in self.choices[:: self.body.n])
        completion = sum(len(c.tokens) for c in self.choices)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


async def _until_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def make_app(server) -> FastAPI:
    """The ASGI app over a `serving.server.Server` (its scheduler, vocabulary, limits and metrics)."""

    @contextlib.asynccontextmanager
    async def lifespan(app_):
        app_.state.handoff = Handoff(asyncio.get_running_loop())
        # Compile in the background: the port is open at once and /health says 503 until it is done.
        warm_up = threading.Thread(target=server.start, name="warm-up", daemon=True)
        warm_up.start()
        yield
        warm_up.join()
        server.stop()

    app = FastAPI(title="gemini-jax", docs_url=None, redoc_url=None, lifespan=lifespan)
    metrics = server.metrics
    app.add_middleware(Guard, server=server)

    @app.exception_handler(ApiError)
    async def api_error(_, error: ApiError):
        return error_response(error.status, error.message, error.param, error.code, error.kind, error.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(_, error: RequestValidationError):
        errors = error.errors()
        if errors[0].get("type") == "json_invalid":
            first = errors[0]
            return error_response(400, f"the body is not valid JSON: {first.get('ctx', {}).get('error', first['msg'])}")
        param, message = describe_error(errors)
        return error_response(400, message, param=param, code="invalid_value")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_, error: StarletteHTTPException):
        return error_response(error.status_code, str(error.detail), headers=getattr(error, "headers", None))

    @app.exception_handler(Exception)
    async def unexpected(_, error: Exception):
        return error_response(500, f"internal error: {type(error).__name__}: {error}", kind="server_error")

    @app.get("/health")
    async def health():
        if not server.ready:
            return error_response(503, "warming up: compiling the engine", kind="server_error", code="not_ready")
        if not server.scheduler.alive:
            return error_response(503, f"the scheduler has stopped ({server.scheduler.died or 'not running'}); "
                                  "restart the server", kind="server_error", code="scheduler_down")
        return {"status": "ok", "slots": server.scheduler.engine.slots, "slots_in_use": server.scheduler.slots_in_use}

    @app.get("/metrics")
    async def prometheus():
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": server.model_name, "object": "model", "created": server.started,
                                            "owned_by": "gemini-jax", **server.model_card()}]}

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        _check_model(server, body.model)
        try:
            prompts = await asyncio.to_thread(completion_prompts, server, body)  # tokenizing: off the event loop
        except BadInput as error:
            raise ApiError(400, str(error), param=error.param, code=error.code) from None
        default = min(16, server.cfg.serve.max_tokens)  # OpenAI's default, 16, within the server's limit
        prompts = _with_budget(server, prompts, body.max_tokens or default, "max_tokens")
        return await _respond(server, request, body, prompts, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest, request: Request):
        _check_model(server, body.model)
        try:
            prompt = await asyncio.to_thread(chat_prompt, server, body)
        except BadInput as error:
            raise ApiError(400, str(error), param=error.param, code=error.code) from None
        # A picture is always one image's worth of codes, whatever max_tokens says.
        if prompt.kind == "image":
            budget, param = prompt.params.max_tokens, "modalities"
        else:
            budget, param = body.max_completion_tokens or body.max_tokens, "max_tokens"
        return await _respond(server, request, body, _with_budget(server, [prompt], budget, param), chat=True)

    return app


def _check_model(server, model: str | None) -> None:
    if model is not None and model != server.model_name:
        raise ApiError(404, f"model {model!r} is not served here; GET /v1/models lists {server.model_name!r}",
                       param="model", code="model_not_found")


def _with_budget(server, prompts: list[Prompt], max_tokens: int | None, param: str) -> list[Prompt]:
    """Each prompt with its token budget (None: as many as fit), refused with 400 naming the limit it breaks."""
    cache_len, limit = server.cfg.serve.max_cache_len, server.cfg.serve.max_tokens
    asked = f"{param}={max_tokens}" if param != "modalities" else f"a picture ({max_tokens} image codes)"
    if max_tokens is not None and max_tokens > limit:
        raise ApiError(400, f"{asked} is over the server's limit of {limit} tokens a reply (serve.max_tokens)",
                       param=param, code="max_tokens_exceeded")
    out = []
    for prompt in prompts:
        room = cache_len - len(prompt.ids)
        if room < 1:
            raise ApiError(400, f"the prompt is {len(prompt.ids)} tokens; the limit is {cache_len - 1} "
                           f"(serve.max_cache_len={cache_len}, less one token to generate)", param="prompt",
                           code="context_length_exceeded")
        if max_tokens is not None and max_tokens > room:
            raise ApiError(400, f"the prompt's {len(prompt.ids)} tokens + {asked} exceed the "
                           f"{cache_len}-token context (serve.max_cache_len)", param=param,
                           code="context_length_exceeded")
        budget = min(limit, room) if max_tokens is None else max_tokens
        out.append(dataclasses.replace(prompt, params=dataclasses.replace(prompt.params, max_tokens=budget)))
    return out


async def _respond(server, request: Request, body, prompts: list[Prompt], chat: bool):
    generation = Generation(server, request.app.state.handoff, prompts, body)
    generation.submit()
    if body.stream:
        return StreamingResponse(_stream(server, generation, body, chat), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})

    async def collect() -> None:
        finished = 0
        while finished < len(generation.choices):
            event = await generation.next()  # raises ApiError on a timeout or a failed generation
            finished += event is not None and event[2]

    collecting = asyncio.ensure_future(collect())
    disconnect = asyncio.ensure_future(_until_disconnect(request))
    try:
        await asyncio.wait({collecting, disconnect}, return_when=asyncio.FIRST_COMPLETED)
        if not collecting.done():
            return Response(status_code=499)  # nobody is listening; the slot is freed below
        collecting.result()
    finally:
        collecting.cancel()
        disconnect.cancel()
        generation.cancel()
    choices = [_choice_body(server, c, body, chat) for c in generation.choices]
    kind = "chat.completion" if chat else "text_completion"
    return {"id": _id(chat), "object": kind, "created": int(time.time()), "model": server.model_name,
            "choices": choices, "usage": generation.usage()}


async def _stream(server, generation: Generation, body, chat: bool) -> AsyncIterator[str]:
    """SSE: a chunk per token that releases text (chat starts with the role), a chunk per finished
    choice with its finish_reason, optionally the usage, then [DONE]. A disconnect cancels here."""
    ident, created = _id(chat), int(time.time())
    kind = "chat.completion.chunk" if chat else "text_completion"

    def chunk(choices, usage=None):
        body_ = {"id": ident, "object": kind, "created": created, "model": server.model_name, "choices": choices}
        if usage is not None:
            body_["usage"] = usage
        return f"data: {json.dumps(body_)}\n\n"

    try:
        if chat:
            yield chunk([{"index": c.index, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                          "finish_reason": None} for c in generation.choices])
        finished = 0
        while finished < len(generation.choices):
            try:
                event = await generation.next()
            except ApiError as error:  # a timeout or a failed generation; the status line is sent: report in the stream
                body_ = {"message": error.message, "type": error.kind, "param": error.param, "code": error.code}
                yield f"data: {json.dumps({'error': body_})}\n\n"
                return
            if event is None:
                continue
            choice, text, done = event
            # A chunk per token (its text may be empty: a piece can wait for the next to decode), so a
            # client sees every token arrive; then one with the finish_reason.
            token = None if done else choice.tokens[-1]
            yield chunk([_delta(server, choice, text, token, done, body, chat)])
            finished += done
        if body.stream_options is not None and body.stream_options.include_usage:
            yield chunk([], usage=generation.usage())
        yield "data: [DONE]\n\n"
    finally:
        generation.cancel()


def _delta(server, choice: Choice, text: str, token: Token | None, done: bool, body, chat: bool) -> dict:
    finish = choice.finish_reason if done else None
    logprobs = None
    if body.reports_logprobs() and token is not None:
        logprobs = _chat_logprobs(server, [token], body) if chat else _completion_logprobs(server, [token], body)
    if chat:
        delta = {"content": text} if text else {}
        if done and choice.prompt.kind == "image":
            delta["images"] = _images(server, choice)
        return {"index": choice.index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
    return {"index": choice.index, "text": text, "logprobs": logprobs, "finish_reason": finish}


def _choice_body(server, choice: Choice, body, chat: bool) -> dict:
    text = choice.stream.released
    if chat:
        message = {"role": "assistant", "content": text}
        if choice.prompt.kind == "image":
            message["images"] = _images(server, choice)
        logprobs = _chat_logprobs(server, choice.tokens, body) if body.reports_logprobs() else None
        return {"index": choice.index, "message": message, "logprobs": logprobs, "finish_reason": choice.finish_reason}
    logprobs = _completion_logprobs(server, choice.tokens, body) if body.reports_logprobs() else None
    return {"index": choice.index, "text": text, "logprobs": logprobs, "finish_reason": choice.finish_reason}


def _images(server, choice: Choice) -> list[dict]:
    url = server.picture_url([t.id for t in choice.tokens])
    return [] if url is None else [{"type": "image_url", "image_url": {"url": url}}]


def _completion_logprobs(server, tokens: list[Token], body) -> dict:
    top = body.logprobs or 0
    return {
        "tokens": [server.token_text(t.id) for t in tokens],
        "token_logprobs": [t.logprob for t in tokens],
        "top_logprobs": [{server.token_text(i): lp for i, lp in t.top(top)} for t in tokens] if top else None,
    }


def _chat_logprobs(server, tokens: list[Token], body) -> dict:
    top = body.top_logprobs or 0

    def entry(token_id: int, logprob: float) -> dict:
        text = server.token_text(token_id)
        return {"token": text, "logprob": logprob, "bytes": list(text.encode())}

    return {"content": [{**entry(t.id, t.logprob), "top_logprobs": [entry(i, lp) for i, lp in t.top(top)]}
                        for t in tokens]}


def _timed_out(server) -> ApiError:
    return ApiError(504, f"the request took over serve.request_timeout_s={server.cfg.serve.request_timeout_s} s",
                    code="timeout", kind="server_error")


def _id(chat: bool) -> str:
    return ("chatcmpl-" if chat else "cmpl-") + secrets.token_hex(12)
