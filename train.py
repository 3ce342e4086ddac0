"""Train the model: `python train.py --config tiny [--model.num-layers 2 ...]`.

What runs today (issue 2, the foundation): resolve the config, build the mesh, initialise the
decoder directly into its shards, and score a batch at initialisation: unit-scale logits put an
untrained model at about ln(vocab) + 0.5. The data pipeline and training loop land with issues 3-5.
"""

from __future__ import annotations

import math
import time

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding

from configs.cli import parse
from model.costs import counted_params, train_flops_per_token
from model.loss import cross_entropy
from model.sharding import logical_to_spec, make_mesh
from model.transformer import forward, init_model


def main() -> None:
    cfg, _ = parse(prog="train.py")
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
    print("The training loop is not built yet (issue 5); nothing was trained or saved.")


if __name__ == "__main__":
    main()
