"""A small served model for the engine and HTTP tests: the world's vocabulary layout, random weights."""

import contextlib
import dataclasses
import threading
import time

import numpy as np

from configs.base import Config, DataConfig, MeshConfig, ServeConfig
from parallel.sharding import make_mesh
from model.transformer import init_model
from serving.engine import Engine, SamplingParams
from serving.scheduler import Finished, Request, Scheduler, Token
from tests.helpers import WORLD_MODEL

SERVE_CFG = Config(name="test-model", model=WORLD_MODEL, mesh=MeshConfig(data=1, fsdp=1, tensor=1),
                   data=DataConfig(seq_len=256),
                   serve=ServeConfig(slots=4, max_cache_len=128, max_tokens=100, max_queue=300, request_timeout_s=60))
EOS = 2  # the world tokenizer's <eos> (ids 0-9 are fixed control symbols)
REAL_VOCAB = 3024  # text, image and audio ids; the model's vocabulary is padded to 3072


def served_model(cfg: Config = SERVE_CFG, mesh=None, seed: int = 0):
    return init_model(cfg.model, mesh or make_mesh(cfg.mesh), seed)


def make_engine(graphdef, state, cfg: Config = SERVE_CFG, mesh=None, slots=None, int8_weights=False) -> Engine:
    return Engine(cfg.model, graphdef, state, mesh or make_mesh(cfg.mesh), slots or cfg.serve.slots,
                  cfg.serve.max_cache_len, eos_id=EOS, real_vocab=REAL_VOCAB, int8_weights=int8_weights)


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

    def wait(self, timeout: float = 60.0) -> "Collected":
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
