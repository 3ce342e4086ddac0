"""A small served model for the engine and HTTP tests: the world's vocabulary layout, random weights."""

import base64
import contextlib
import dataclasses
import http.client
import io
import json
import socket
import threading
import time
import wave

import numpy as np
import uvicorn
from PIL import Image

from configs.base import Config, DataConfig, MeshConfig, ServeConfig
from parallel.sharding import make_mesh
from model.transformer import init_model
from serving.api import make_app
from serving.connections import uvicorn_config
from serving.engine import Engine, SamplingParams
from serving.scheduler import Finished, Request, Scheduler, Token
from tests.helpers import WORLD_MODEL

SERVE_CFG = Config(name="test-model", model=WORLD_MODEL, mesh=MeshConfig(data=1, fsdp=1, tensor=1),
                   data=DataConfig(seq_len=256),
                   serve=ServeConfig(slots=4, max_cache_len=128, max_tokens=100, max_queue=300, request_timeout_s=60,
                                     header_timeout_s=2.0, body_timeout_s=2.0))
EOS = 2  # the world tokenizer's <eos> (ids 0-9 are fixed control symbols)
REAL_VOCAB = 3024  # text, image and audio ids; the model's vocabulary is padded to 3072


def served_model(cfg: Config = SERVE_CFG, mesh=None, seed: int = 0):
    return init_model(cfg.model, mesh or make_mesh(cfg.mesh), seed)


def make_engine(graphdef, state, cfg: Config = SERVE_CFG, mesh=None, slots=None, int8_weights=False,
                prefix_cache_tokens=0) -> Engine:
    return Engine(cfg.model, graphdef, state, mesh or make_mesh(cfg.mesh), slots or cfg.serve.slots,
                  cfg.serve.max_cache_len, eos_id=EOS, real_vocab=REAL_VOCAB, int8_weights=int8_weights,
                  prefix_cache_tokens=prefix_cache_tokens)


class Collected:
    """A request's events, gathered on the scheduler thread; `wait` blocks until it finishes."""

    def __init__(self):
        self.tokens: list[int] = []
        self.finished: Finished | None = None
        self.done = threading.Event()
        self.finished_at: float | None = None

    def __call__(self, event):
        if isinstance(event, Token):
            self.tokens.append(event.id)
        else:
            self.finished, self.finished_at = event, time.perf_counter()
            self.done.set()

    def wait(self, timeout: float = 300.0) -> "Collected":
        # A guard against a hung scheduler, not a time limit: on a loaded 2-core machine the first
        # request's programs (8 simulated devices, say) take minutes to compile.
        assert self.done.wait(timeout), "the request did not finish"
        return self


@contextlib.contextmanager
def running(engine: Engine, max_queue: int):
    """A started scheduler over `engine`, stopped on the way out whatever happens inside."""
    scheduler = Scheduler(engine, max_queue=max_queue)
    scheduler.start()
    try:
        yield scheduler
    finally:
        scheduler.stop()


def request(prompt, max_tokens: int, **params) -> tuple[Request, Collected]:
    sink = Collected()
    params = SamplingParams(max_tokens=max_tokens, **params)
    return Request(np.asarray(prompt, np.int32), params, sink), sink


def prompt_of(length: int, seed: int) -> np.ndarray:
    """<bos> then text-range ids (no <eos> among them, so a greedy reply is not cut by the prompt)."""
    rng = np.random.default_rng(seed)
    return np.concatenate([[1], rng.integers(10, 1024, length - 1)]).astype(np.int32)


def replace_serve(cfg: Config, **fields) -> Config:
    return dataclasses.replace(cfg, serve=dataclasses.replace(cfg.serve, **fields))


# ---- a live HTTP server ---------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclasses.dataclass
class Live:
    server: object
    port: int

    def call(self, method: str, path: str, body=None, headers=None, timeout=60):
        """(status, headers, parsed JSON or raw text)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        data = body if isinstance(body, (bytes, str)) or body is None else json.dumps(body)
        conn.request(method, path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
        response = conn.getresponse()
        raw = response.read().decode()
        conn.close()
        try:
            return response.status, response.headers, json.loads(raw)
        except json.JSONDecodeError:
            return response.status, response.headers, raw

    def post(self, path, body, **kwargs):
        return self.call("POST", path, body, **kwargs)

    def events(self, path, body) -> list[dict]:
        status, _, raw = self.post(path, {**body, "stream": True})
        assert status == 200, raw
        lines = [line[len("data: "):] for line in raw.split("\n\n") if line.startswith("data: ")]
        assert lines[-1] == "[DONE]"
        return [json.loads(line) for line in lines[:-1]]

    def healthy(self) -> dict:
        status, _, body = self.call("GET", "/health")
        assert status == 200, body
        return body

    def wait_idle(self, seconds: float = 10.0) -> None:
        deadline = time.time() + seconds
        while self.healthy()["slots_in_use"] and time.time() < deadline:
            time.sleep(0.02)
        assert self.healthy()["slots_in_use"] == 0, "a slot is still held"


def png_bytes(colour=(220, 40, 40), size=32) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def wav_bytes(seconds=1.0, rate=16000) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    samples = (0.3 * np.sin(2 * np.pi * 697 * t) * 32767).astype(np.int16)
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(rate), w.writeframes(samples.tobytes())
    return buffer.getvalue()


def data_url(data: bytes, mime="image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


@contextlib.contextmanager
def serving_live(server, **config):
    """`server`'s app on uvicorn, configured as serve.py configures it, on a free port; yields a Live
    once /health answers 200 (or, with `wait=False`, as soon as the port is open)."""
    wait = config.pop("wait", True)
    port = free_port()
    uv = uvicorn.Server(uvicorn_config(make_app(server), dataclasses.replace(server.cfg.serve, port=port),
                                       log_level="warning", **config))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    live = Live(server, port)
    deadline = time.time() + 120
    while wait and time.time() < deadline:
        with contextlib.suppress(OSError):
            if live.call("GET", "/health")[0] == 200:
                break
        time.sleep(0.1)
    try:
        yield live
    finally:
        uv.should_exit = True
        thread.join(timeout=30)
