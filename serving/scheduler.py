"""Continuous batching: one thread keeps the engine's slots full as requests arrive and finish.

Each turn of the loop:
  1. free the slots of cancelled requests (the HTTP layer cancels on disconnect, timeout, stop string);
  2. admit waiting requests into free slots: prefill, insert, report the first token;
  3. dispatch one decode step for every slot, then deliver the *previous* step's tokens.

Delivering one step behind keeps the device busy while the host reads tokens: the next step is
already queued when the host waits. A slot that stops on the device (a stop id, its budget)
decodes nothing more meanwhile, and the host frees it when it reads that step. A finished or
cancelled request frees its slot at once, for the next turn's admissions.

Events reach each request through its `emit` callback, called on this thread: the HTTP layer
hands them to its event loop; tests collect them.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
import time
import traceback
from typing import Callable

import jax
import numpy as np

from serving.engine import Engine, SamplingParams
from serving.prefix_cache import Plan


@dataclasses.dataclass(frozen=True)
class Token:
    id: int
    logprob: float
    top_ids: np.ndarray  # the likeliest alternatives, most likely first (rows of the step's output,
    top_logprobs: np.ndarray  # left as arrays: most requests never ask for them)

    def top(self, k: int) -> list[tuple[int, float]]:
        """The `k` likeliest alternatives as (id, logprob)."""
        return [(int(i), float(lp)) for i, lp in zip(self.top_ids[:k], self.top_logprobs[:k])]


@dataclasses.dataclass(frozen=True)
class Finished:
    reason: str  # "stop" (a stop id), "length" (max_tokens or the cache), "cancelled", "error"
    error: str | None = None


class QueueFull(Exception):
    pass


class SchedulerDown(Exception):
    pass


@dataclasses.dataclass(eq=False)
class Request:
    prompt: np.ndarray
    params: SamplingParams
    emit: Callable[[Token | Finished], None]
    arrived: float = dataclasses.field(default_factory=time.perf_counter)
    cancel_reason: str | None = None  # set by `Scheduler.cancel`, from any thread
    finished: bool = False
    last_token_at: float | None = None
    plan: Plan | None = None  # the prefix cache's blocks it holds, from admission to its end


class Scheduler:
    def __init__(self, engine: Engine, max_queue: int, metrics=None):
        self.engine, self.max_queue, self.metrics = engine, max_queue, metrics
        self.waiting: collections.deque[Request] = collections.deque()
        self.slots: list[Request | None] = [None] * engine.slots
        self.wake = threading.Condition()
        self.in_flight = None  # (step outputs on the device, the slots' requests when it was dispatched)
        self.running = False
        self.thread: threading.Thread | None = None
        self.died: str | None = None  # why the thread stopped, if it stopped while running

    # ---- called from any thread ---------------------------------------------------------------
    def submit(self, request: Request) -> None:
        with self.wake:
            if self.died is not None:
                raise SchedulerDown(self.died)
            if len(self.waiting) >= self.max_queue:
                raise QueueFull(f"{len(self.waiting)} requests are waiting (serve.max_queue={self.max_queue})")
            self.waiting.append(request)
            self._observe_queue()
            self.wake.notify()

    def cancel(self, request: Request, reason: str = "cancelled") -> None:
        with self.wake:
            if request.cancel_reason is None:
                request.cancel_reason = reason
            self.wake.notify()

    def start(self) -> None:
        self.running = True
        self.thread = threading.Thread(target=self._run, name="scheduler", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        with self.wake:
            self.running = False
            self.wake.notify()
        if self.thread is not None:
            self.thread.join()

    def run_until_idle(self) -> None:
        """Run turns on the calling thread until every submitted request has finished (offline use,
        serving/offline.py: the same admissions, steps and deliveries as the server's thread)."""
        while self.waiting or self.slots_in_use or self.in_flight is not None:
            self._turn()

    @property
    def alive(self) -> bool:
        """The thread runs and takes requests (false before `start` and after it died)."""
        return self.thread is not None and self.thread.is_alive() and self.died is None

    @property
    def slots_in_use(self) -> int:
        return sum(r is not None for r in self.slots)

    # ---- the loop (scheduler thread) ----------------------------------------------------------
    def _run(self) -> None:
        try:
            while self.running:
                try:
                    self._turn()
                except Exception:  # a bug must not wedge the server: fail what is in flight, start clean
                    error = traceback.format_exc(limit=3)
                    for request in [r for r in self.slots if r is not None]:
                        self._finish(request, Finished("error", error))
                    self.slots = [None] * self.engine.slots
                    self.in_flight = None
                    self.engine.reset()
        except BaseException as error:  # the engine cannot even reset: fail everything, and say so on /health
            with self.wake:
                self.died = f"{type(error).__name__}: {error}"
                stranded = [r for r in self.slots if r is not None] + list(self.waiting)
                self.waiting.clear()
            for request in stranded:
                self._finish(request, Finished("error", f"the scheduler stopped: {self.died}"))
            logging.getLogger(__name__).exception("the scheduler stopped; /health now answers 503")

    def _turn(self) -> None:
        with self.wake:
            if not self.waiting and self.slots_in_use == 0 and self.in_flight is None:
                self.wake.wait(timeout=0.1)
                return
            self._free_cancelled()
        self._admit()
        live = np.array([r is not None for r in self.slots])
        dispatched = None
        if live.any():
            dispatched = (self.engine.step(live), list(self.slots))
        previous, self.in_flight = self.in_flight, dispatched
        if previous is not None:
            self._deliver(*previous)
        if self.metrics is not None:
            self.metrics.slots_in_use.set(self.slots_in_use)

    def _free_cancelled(self) -> None:
        for slot, request in enumerate(self.slots):
            if request is not None and request.cancel_reason is not None:
                self.slots[slot] = None
                self._finish(request, Finished(request.cancel_reason))
        for request in [r for r in self.waiting if r.cancel_reason is not None]:
            self.waiting.remove(request)
            self._finish(request, Finished(request.cancel_reason))

    def _admit(self) -> None:
        while True:
            with self.wake:
                free = [s for s, r in enumerate(self.slots) if r is None]
                if not free or not self.waiting:
                    self._observe_queue()
                    return
                request = self.waiting.popleft()
            cache = self.engine.prefix_cache
            try:
                request.plan = cache.plan(request.prompt) if cache is not None and request.prompt.size else None
                prefix = self.engine.prefill(request.prompt, request.params, request.plan)
                self.engine.insert(prefix, free[0])
                first = jax.device_get(prefix.first)
            except Exception as error:  # the API checks limits first; whatever remains fails this request only
                if request.plan is not None:  # the blocks it was to write hold nothing
                    cache.discard(request.plan)
                    request.plan = None
                self._finish(request, Finished("error", f"{type(error).__name__}: {error}"))
                continue
            if request.plan is not None and self.metrics is not None:
                self.metrics.prefix_cache_hit_tokens.inc(request.plan.reused_tokens)
                self.metrics.prefix_cache_miss_tokens.inc(request.prompt.size - request.plan.reused_tokens)
                self.metrics.prefix_cache_blocks.set(cache.cached_blocks)
            self.slots[free[0]] = request
            token = int(first.tokens[0])
            self._emit_token(request, token, first.logprobs[0], first.top_ids[0], first.top_logprobs[0])
            stop_ids = (self.engine.eos_id, *request.params.stop_ids)
            if token in stop_ids or request.params.max_tokens == 1:
                self.slots[free[0]] = None  # the device left the slot inactive: it is free again
                self._finish(request, Finished("stop" if token in stop_ids else "length"))

    def _deliver(self, out, occupants: list[Request | None]) -> None:
        sampled, active, stopped = jax.device_get(out)
        for slot, request in enumerate(occupants[: len(active)]):  # the step's width: every slot in use
            if request is None or not active[slot] or request.finished:
                continue
            token = int(sampled.tokens[slot])
            self._emit_token(request, token, sampled.logprobs[slot], sampled.top_ids[slot], sampled.top_logprobs[slot])
            if stopped[slot]:
                if self.slots[slot] is request:
                    self.slots[slot] = None
                stop_ids = (self.engine.eos_id, *request.params.stop_ids)
                self._finish(request, Finished("stop" if token in stop_ids else "length"))

    def _emit_token(self, request: Request, token: int, logprob, top_ids, top_logprobs) -> None:
        now = time.perf_counter()
        if self.metrics is not None:
            if request.last_token_at is None:
                self.metrics.time_to_first_token.observe(now - request.arrived)
            else:
                self.metrics.time_per_output_token.observe(now - request.last_token_at)
            self.metrics.tokens_generated.inc()
        request.last_token_at = now
        request.emit(Token(token, float(logprob), top_ids, top_logprobs))

    def _finish(self, request: Request, event: Finished) -> None:
        if request.plan is not None:  # its prefix blocks stay cached, and may be evicted now
            self.engine.prefix_cache.release(request.plan)
            request.plan = None
        if not request.finished:
            request.finished = True
            request.emit(event)

    def _observe_queue(self) -> None:
        if self.metrics is not None:
            self.metrics.queue_depth.set(len(self.waiting))
