"""Training-step throughput and MFU at the bench shape (63.4M parameters, batch 8 x 512, fp32, CPU).

    python bench/train.py [--steps 4] [--vs-torch] [--remat-policy none] [--profile DIR] [--shape tiny]

Times the real step the trainer runs (training/train_step.py: AdamW, clipping, z-loss, NaN guard;
jitted with the state donated) on random batches shaped like the pipeline's. The model is the
tiny preset widened to d_model 512, 8 layers, 8 query heads over 1 kv head, gated MLP 2048, an
untied 32,768-id vocabulary, and no remat: the activations fit, and dots_saveable measured the
same within noise (docs/performance.md).
Prints JSON lines:
  - the step: tokens/s, median step seconds, model FLOPs per step (model/costs.py, logits matmul
    included), the matmul peak measured in this run (parallel/hardware.py) and MFU against it;
  - with --vs-torch (the `bench` extra), the same shape as an HF LlamaForCausalLM trained eagerly
    with torch AdamW on the same batch, and the JAX / torch tokens/s ratio.
--profile DIR writes a jax.profiler trace of one step there (TensorBoard / Perfetto).
--shape tiny times the tiny preset's own model and batch (4 x 512) instead: the step of the default run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from configs import get_config
from configs.base import REMAT_POLICIES, ModelConfig, TrainConfig
from configs.bench import SEQ, bench_config
from model.costs import counted_params, train_flops_per_token
from model.transformer import Transformer
from parallel.hardware import matmul_peak_flops
from parallel.host_memory import reuse_freed_memory
from training.train_step import make_optimizer, train_step

BATCH = 8


def random_batch(cfg: ModelConfig, batch: int, seq: int, seed: int = 0) -> dict:
    """One row per sequence, every position trained; the keys and dtypes of data/pipeline.py's batches."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, cfg.vocab_size, (batch, seq + 1)).astype(np.int32)
    return {
        "inputs": tokens[:, :-1], "targets": tokens[:, 1:],
        "loss_mask": np.ones((batch, seq), np.int32),
        "modality": rng.integers(0, 3, (batch, seq)).astype(np.int32),
        "segment_ids": np.ones((batch, seq), np.int32),
        "positions": np.broadcast_to(np.arange(seq, dtype=np.int32), (batch, seq)).copy(),
    }


def timed(run_step, steps: int) -> list[float]:
    seconds = []
    for _ in range(steps):
        start = time.perf_counter()
        run_step()
        seconds.append(time.perf_counter() - start)
    return seconds


def figures(name: str, seconds: list[float], tokens_per_step: int, flops_per_step: float, peak: float) -> dict:
    step_s = statistics.median(seconds)
    return {"bench": name, "tokens_per_s": round(tokens_per_step / step_s, 1), "step_s": round(step_s, 3),
            "step_s_min": round(min(seconds), 3), "steps": len(seconds), "model_flops_per_step": flops_per_step,
            "model_flops_per_s": round(flops_per_step / step_s), "matmul_peak_flops": round(peak),
            "mfu": round(flops_per_step / step_s / peak, 4)}


def jax_step(cfg: ModelConfig, train: TrainConfig, batch: dict, steps: int, profile: str | None) -> list[float]:
    graphdef, model_state = nnx.split(Transformer(cfg, rngs=nnx.Rngs(0)))
    params = nnx.state(nnx.merge(graphdef, model_state), nnx.Param)
    tx = make_optimizer(train)
    state = {"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32)}
    step = jax.jit(train_step(graphdef, tx, train), donate_argnums=0)
    batch = jax.device_put(batch)
    holder = {"state": state}

    def run():
        holder["state"], metrics = step(holder["state"], batch)
        jax.block_until_ready(metrics)

    run()  # compile
    run()  # first steps touch fresh buffers
    if profile:
        with jax.profiler.trace(profile):
            run()
    return timed(run, steps)


def torch_step(cfg: ModelConfig, train: TrainConfig, batch: dict, steps: int) -> list[float]:
    """HF Llama at the same shape: eager fp32, torch AdamW, the same clipping; causal, one sequence per row."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.mlp_dim,
        num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads,
        head_dim=cfg.head_dim, max_position_embeddings=cfg.max_seq_len, rms_norm_eps=cfg.norm_eps,
        rope_theta=cfg.rope_base, tie_word_embeddings=cfg.tie_embeddings, attn_implementation="sdpa",
    )).float().train()
    assert sum(p.numel() for p in model.parameters()) == counted_params(cfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=train.learning_rate, betas=(0.9, 0.95),
                                  weight_decay=train.weight_decay)
    inputs = torch.from_numpy(batch["inputs"]).long()
    targets = torch.from_numpy(batch["targets"]).long()

    def run():
        logits = model(input_ids=inputs).logits
        loss = torch.nn.functional.cross_entropy(logits.view(-1, logits.shape[-1]), targets.view(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), train.grad_clip_norm)
        optimizer.step()

    run()
    run()
    return timed(run, steps)


def main() -> None:
    reuse_freed_memory()  # as train.py does (parallel/host_memory.py)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=4, help="timed steps after two warm-up steps")
    parser.add_argument("--vs-torch", action="store_true", help="also time HF Llama in eager PyTorch (`bench` extra)")
    parser.add_argument("--remat-policy", default="none", choices=REMAT_POLICIES,
                        help="model.remat_policy for the bench shape (default none: the activations fit)")
    parser.add_argument("--profile", default=None, help="write a jax.profiler trace of one step to this directory")
    parser.add_argument("--shape", default="bench", choices=("bench", "tiny"),
                        help="bench: the 63.4M-parameter bench shape; tiny: the tiny preset's model and batch")
    args = parser.parse_args()
    if args.vs_torch and args.shape != "bench":
        parser.error("--vs-torch compares the bench shape only (HF Llama has no factorised code rows)")

    tiny = get_config("tiny")
    if args.shape == "tiny":
        cfg, batch_size, seq = tiny.model, tiny.data.global_batch_size, tiny.data.seq_len
    else:
        cfg, batch_size, seq = bench_config(args.remat_policy), BATCH, SEQ
    train = tiny.train
    params = counted_params(cfg)
    flops_per_step = train_flops_per_token(cfg, seq) * batch_size * seq
    batch = random_batch(cfg, batch_size, seq)
    peak = matmul_peak_flops()
    shape = {"shape": args.shape, "params": params, "batch": [batch_size, seq], "vocab": cfg.vocab_size,
             "remat_policy": cfg.remat_policy, "scan_unroll": cfg.scan_unroll, "dtype": cfg.compute_dtype,
             "backend": jax.default_backend(), "jax": jax.__version__}
    tokens = batch_size * seq
    jax_figures = figures("train_step", jax_step(cfg, train, batch, args.steps, args.profile), tokens, flops_per_step,
                          peak)
    print(json.dumps({**jax_figures, **shape}), flush=True)
    if args.vs_torch:
        import torch

        torch_figures = figures("train_step_torch", torch_step(cfg, train, batch, args.steps), tokens, flops_per_step,
                                peak)
        print(json.dumps({**torch_figures, "torch": torch.__version__, "threads": torch.get_num_threads(),
                          "jax_over_torch": round(jax_figures["tokens_per_s"] / torch_figures["tokens_per_s"], 3)}))


if __name__ == "__main__":
    main()
