"""Serve the model over HTTP: `python serve.py --workdir runs/tiny`, or `python serve.py --config tiny --random-init`.

    load      the latest checkpoint's parameters (the SFT stage's when the run has one) and the
              trained tokenizers of --workdir (checkpoints.py); --random-init: neither
    engine    the weights prepared for decoding (per layer, compute dtype or int8), B decode
              slots sharing one KV cache, jitted prefill / insert / step           (serving/engine.py)
    schedule  a thread that keeps the slots full as requests come and go            (serving/scheduler.py)
    HTTP      OpenAI-compatible completions and chat, /v1/models, /health, /metrics  (serving/api.py),
              with bounded connections and deadlines for slow clients            (serving/connections.py)

Binds 127.0.0.1:8000 by default (`--serve.host`, `--serve.port`); every limit is a `--serve.*` flag.
/health answers 503 until every program is compiled, then 200.

`--compile-only --topology v5p-64` compiles the decode step for a TPU slice on this machine and
reports per-chip HBM, FLOPs and the step-time bound (serving/compile_only.py).
"""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path
from typing import Annotated

import tyro
import uvicorn

from checkpoints import (checkpoint_dir, latest_stage, load_vocabulary, restore_params, tokenizers_exist,
                         untrained_vocabulary)
from configs.cli import parse
from model.transformer import init_model
from open_weights.load import describe, hf_folder, own_ids, run_config, text_model
from parallel.aot import compile_on_cpu, compile_only
from parallel.sharding import make_mesh
from serving.api import make_app
from serving.compile_only import compile_decode_step
from serving.connections import uvicorn_config
from serving.media import FetchPolicy
from serving.server import make_server


@dataclasses.dataclass(frozen=True)
class ServeFlags:
    """serve.py's own flags; every config field is a flag too (configs/cli.py)."""

    workdir: Annotated[str | None, tyro.conf.arg(help_behavior_hint="(default: runs/<preset>)")] = None
    """the training run to serve: its latest checkpoint and its tokenizers"""
    random_init: tyro.conf.FlagCreatePairsOff[bool] = False
    """serve untrained weights: no checkpoint needed (smoke tests)"""
    init_from: str | None = None
    """serve a Hugging Face Llama or Gemma checkpoint directly, hf:DIR (its weights and tokenizer.model; text only)"""
    api_key: Annotated[str | None, tyro.conf.arg(help_behavior_hint="(default: $SERVE_API_KEY)")] = (
        dataclasses.field(default_factory=lambda: os.environ.get("SERVE_API_KEY")))
    """require `Authorization: Bearer KEY` on every route but /health"""
    allow_image_host: tyro.conf.UseAppendAction[tuple[str, ...]] = ()
    """a host that image_url parts may be fetched from; none by default"""
    allow_private_image_addresses: tyro.conf.FlagCreatePairsOff[bool] = False
    """let an allowed image host resolve to a loopback, private or link-local address (off: public only)"""
    topology: str | None = None
    """a TPU slice, e.g. v5p-64 or v5e-16: serve with the preset's plan for it; with --compile-only, compile for it"""
    compile_only: tyro.conf.FlagCreatePairsOff[bool] = False
    """compile the decode step for --topology (needs the `tpu` extra), print per-chip memory and FLOPs, and exit"""


def main() -> None:
    cfg, flags = parse(prog="serve.py", flags=ServeFlags, program="serve")
    if flags.compile_only:  # parallel/aot.py, serving/compile_only.py
        compile_on_cpu()
        sys.exit(compile_only(compile_decode_step, cfg, flags.topology))
    workdir = Path(flags.workdir or f"runs/{cfg.name}")
    producible = None  # every token
    try:
        if not flags.random_init:  # a run trained from open weights has its checkpoint's architecture
            cfg = run_config(cfg, workdir)
        mesh = make_mesh(cfg.mesh)
        if flags.init_from:  # open_weights/: the checkpoint's architecture, our control symbols after its ids
            folder = hf_folder(flags.init_from)
            cfg, vocab, graphdef, params = text_model(folder, cfg, mesh)
            producible, stage, step = own_ids(folder, vocab), "imported", 0
            print(f"serving the {describe(folder, cfg.model)}")
        elif flags.random_init:
            graphdef, params = init_model(cfg.model, mesh, cfg.train.seed)
            vocab = load_vocabulary(cfg, workdir) if tokenizers_exist(workdir) else untrained_vocabulary(cfg)
            print(f"serving {cfg.name} with random weights")
        else:
            vocab = load_vocabulary(cfg, workdir)
            stage = latest_stage(workdir)  # the instruction-tuned model when there is one
            graphdef, params, step = restore_params(cfg, workdir, mesh, stage)
            print(f"serving {cfg.name} from {checkpoint_dir(workdir, stage)} at step {step}")
    except (ValueError, FileNotFoundError) as error:
        sys.exit(f"serve.py: {error}")
    fetch_policy = FetchPolicy(flags.allow_image_host, flags.allow_private_image_addresses, cfg.serve.fetch_timeout_s)
    server = make_server(cfg, vocab, graphdef, params, mesh, api_key=flags.api_key, fetch_policy=fetch_policy,
                         tuned=None if flags.random_init else (stage, step), is_token=producible,
                         model_name=folder.name if flags.init_from else cfg.name)
    del params  # the engine keeps its own copy, prepared for decoding: this one would double the memory
    uvicorn.Server(uvicorn_config(make_app(server), cfg.serve, log_level="info")).run()


if __name__ == "__main__":
    main()
