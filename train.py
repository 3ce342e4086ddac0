"""Train the model: `python train.py --config tiny [--workdir runs/tiny] [--stage all] [--model.num-layers 2 ...]`.

Stages, in order (`--stage all` runs each one whose output is missing):
  tokenizers  SentencePiece, image and audio tokenizers on the procedural world  (issue 3)
  lm          the decoder (issue 5: not built yet; today this stage builds the model into its
              shards and scores a batch at initialisation, where unit-scale logits put an
              untrained model at about ln(vocab) + 0.5)
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding

from configs.base import Config
from configs.cli import parse
from model.costs import counted_params, train_flops_per_token
from model.loss import cross_entropy
from model.sharding import logical_to_spec, make_mesh
from model.transformer import forward, init_model
from training.tokenizer_stage import tokenizers_exist, train_tokenizers

FLAGS = {
    "--workdir": dict(default=None, help="where everything goes (default runs/<preset>)"),
    "--stage": dict(default="all", choices=("all", "tokenizers", "lm"), help="which stage to run"),
}


def lm_stage(cfg: Config) -> None:
    mesh = make_mesh(cfg.mesh)
    print(f"preset {cfg.name}: {counted_params(cfg.model):,} parameters, "
          f"{train_flops_per_token(cfg.model, cfg.data.seq_len):,} training FLOPs/token, mesh {dict(mesh.shape)}")
    start = time.perf_counter()
    graphdef, state = init_model(cfg.model, mesh, cfg.train.seed)
    print(f"initialised into shards in {time.perf_counter() - start:.1f}s")

    batch = (cfg.data.global_batch_size, cfg.data.seq_len)
    tokens = jax.random.randint(jax.random.key(cfg.data.seed), batch, 0, cfg.model.vocab_size)
    with jax.set_mesh(mesh):
        tokens = jax.device_put(tokens, NamedSharding(mesh, logical_to_spec(("batch", "length"))))
        logits, _ = jax.jit(forward, static_argnums=0)(graphdef, state, tokens)
        loss, _ = cross_entropy(logits[:, :-1], tokens[:, 1:], jnp.ones((batch[0], batch[1] - 1)))
    print(f"loss at initialisation on uniform random tokens: {float(loss):.3f} "
          f"(ln vocab = {math.log(cfg.model.vocab_size):.3f})")
    print("The LM training loop is not built yet (issue 5); nothing was trained or saved for the LM.")


def main() -> None:
    cfg, flags = parse(prog="train.py", flags=FLAGS)
    workdir = Path(flags.workdir or f"runs/{cfg.name}")
    if flags.stage == "tokenizers" or (flags.stage == "all" and not tokenizers_exist(workdir)):
        train_tokenizers(cfg, workdir)
    elif flags.stage == "all":
        print(f"tokenizers: found under {workdir}/tokenizers, not retrained")
    if flags.stage in ("all", "lm"):
        lm_stage(cfg)


if __name__ == "__main__":
    main()
