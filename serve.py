"""Serve the model over HTTP: `python serve.py --workdir runs/tiny`, or `python serve.py --config tiny --random-init`.

    load      the latest checkpoint's parameters and the trained tokenizers of --workdir
              (training/lm_stage.py, training/tokenizer_stage.py); --random-init: neither
    engine    B decode slots sharing one KV cache, jitted prefill / insert / step     (serving/engine.py)
    schedule  a thread that keeps the slots full as requests come and go            (serving/scheduler.py)
    HTTP      OpenAI-compatible completions and chat, /v1/models, /health, /metrics  (serving/api.py)

Binds 127.0.0.1:8000 by default (`--serve.host`, `--serve.port`); every limit is a `--serve.*` flag.
/health answers 503 until every program is compiled, then 200.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import uvicorn

from configs.cli import parse
from model.sharding import make_mesh
from model.transformer import init_model
from serving.api import make_app
from serving.server import make_server
from training.lm_stage import restore_params
from training.tokenizer_stage import load_vocabulary, tokenizers_exist, untrained_vocabulary

FLAGS = {
    "--workdir": dict(default=None, help="the training run to serve (default runs/<preset>)"),
    "--random-init": dict(action="store_true", help="serve untrained weights: no checkpoint needed (smoke tests)"),
    "--api-key": dict(default=os.environ.get("SERVE_API_KEY"),
                      help="require `Authorization: Bearer KEY` on every route but /health (default $SERVE_API_KEY)"),
    "--allow-image-host": dict(action="append", default=[],
                               help="a host image_url parts may be fetched from (repeat for more; default none)"),
}


def main() -> None:
    cfg, flags = parse(prog="serve.py", flags=FLAGS)
    workdir = Path(flags.workdir or f"runs/{cfg.name}")
    try:
        mesh = make_mesh(cfg.mesh)
        if flags.random_init:
            graphdef, params = init_model(cfg.model, mesh, cfg.train.seed)
            vocab = load_vocabulary(cfg, workdir) if tokenizers_exist(workdir) else untrained_vocabulary(cfg)
            print(f"serving {cfg.name} with random weights")
        else:
            vocab = load_vocabulary(cfg, workdir)
            graphdef, params, step = restore_params(cfg, workdir, mesh)
            print(f"serving {cfg.name} from {workdir / 'checkpoints'} at step {step}")
    except (ValueError, FileNotFoundError) as error:
        sys.exit(f"serve.py: {error}")
    server = make_server(cfg, vocab, graphdef, params, mesh, api_key=flags.api_key,
                         allowed_image_hosts=tuple(flags.allow_image_host))
    del params  # the engine keeps its own copy, one array per layer: the stacked one would double the memory
    uvicorn.run(make_app(server), host=cfg.serve.host, port=cfg.serve.port, log_level="info")


if __name__ == "__main__":
    main()
