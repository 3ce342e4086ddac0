"""Offline batch generation: prompts in, completions out, through the serving engine and its
scheduler on the calling thread, with no HTTP. The held-out evaluation answers through here, so it
measures exactly what the server would answer.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from serving.engine import Engine, SamplingParams
from serving.scheduler import Finished, Request, Scheduler, Token


def generate(engine: Engine, prompts: Sequence[np.ndarray], params: SamplingParams | Sequence[SamplingParams]
             ) -> list[np.ndarray]:
    """Each prompt's generated ids, its stop id included where it stopped on one. `params` is one
    SamplingParams for all prompts, or one per prompt."""
    if isinstance(params, SamplingParams):
        params = [params] * len(prompts)
    if len(params) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(params)} SamplingParams")
    scheduler = Scheduler(engine, max_queue=max(1, len(prompts)))
    outputs: list[list[int]] = [[] for _ in prompts]
    failures: list[str] = []

    def collect(index: int):
        def emit(event: Token | Finished) -> None:
            if isinstance(event, Token):
                outputs[index].append(event.id)
            elif event.reason == "error":
                failures.append(f"prompt {index}: {event.error}")
        return emit

    for index, (prompt, request_params) in enumerate(zip(prompts, params)):
        scheduler.submit(Request(np.asarray(prompt, np.int32), request_params, collect(index)))
    scheduler.run_until_idle()
    if failures:
        raise RuntimeError("generation failed: " + "; ".join(failures))
    return [np.asarray(ids, np.int32) for ids in outputs]
