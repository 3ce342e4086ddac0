"""The decoding engine alone at the bench shape (63.4M parameters, fp32, CPU): prefill and decode tokens/s.

    python bench/decode.py [--batches 1 8 32] [--prompt 128] [--new 128] [--vs-hf] [--naive] [--int8] [--sampled]

For each batch B: B prompts of `--prompt` random tokens are prefilled and inserted into B slots
(serving/engine.py), then the slots decode `--new` tokens each (the first comes from the
prefill), reading each step's tokens back one step behind as the scheduler does; the median of
three runs. Greedy rows, reporting no log-probabilities, as HF's greedy generate() is timed: the
step then takes each row's likeliest token and skips the top-k (serving/sampling.py). `--sampled`
draws every row at temperature 1 instead, through the top-k, to show what that costs.
Prints JSON lines:
  - the roofline, measured in this run: the matmul peak, and the time to read an array the size
    of the weights once (parallel/hardware.py, best of 10), which bounds a batch-1 step from below;
  - per batch: prefill tokens/s, decode tokens/s, the decode step's median seconds and its ratio
    to the weight-read time, and end-to-end tokens/s (prefill + decode, as HF's generate() counts).
    The ratio sets like beside like: the step's median against the median of weight reads timed
    before, between and after that batch's three runs (this machine's read speed swings by tens of
    percent between minutes, so a read timed at start-up, or a best set against a median, misstates it);
  - `--naive`: the straightforward loop (jit(forward) per token, cache not donated, logits brought
    to the host and argmax'ed there), to show what the engine's levers are worth;
  - `--vs-hf` (the `bench` extra): HF transformers' generate() on the same shape in PyTorch, greedy,
    end-to-end, and the engine / HF ratio;
  - `--int8`: the engine holds int8 weights (`serve.int8_weights`, model/weights.py), and the weight
    read it is set against is of their bytes.
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

from configs.base import MeshConfig
from configs.bench import bench_config
from model.attention import KVCache
from model.costs import counted_params
from model.transformer import Transformer, forward, prepare_for_decoding, to_per_layer
from parallel.hardware import matmul_peak_flops, read_seconds
from parallel.sharding import make_mesh
from serving.engine import Engine, SamplingParams

EOS = -1  # no stop id: every row decodes its full budget


def bench_model():
    """(config, graph definition, random weights, one-device mesh) at the bench shape (configs/bench.py)."""
    cfg = bench_config()
    graphdef, state = nnx.split(Transformer(cfg, rngs=nnx.Rngs(0)))
    return cfg, graphdef, state, make_mesh(MeshConfig(data=1, fsdp=1, tensor=1), devices=jax.devices()[:1])


def engine_run(engine: Engine, prompts: np.ndarray, new: int, temperature: float = 0.0) -> dict:
    """Prefill + insert every prompt, then decode to `new` tokens each; seconds of each phase."""
    batch = len(prompts)
    start = time.perf_counter()
    for slot, prompt in enumerate(prompts):
        params = SamplingParams(max_tokens=new, temperature=temperature, seed=slot)
        engine.insert(engine.prefill(prompt, params), slot)
    jax.block_until_ready(engine.decode_state.tokens)
    prefill_s = time.perf_counter() - start
    live = np.ones(batch, bool)
    step_times, previous = [], None
    start = last = time.perf_counter()
    for _ in range(new - 1):
        out = engine.step(live)
        if previous is not None:
            jax.device_get(previous)  # the tokens a server would send: one step behind
            now = time.perf_counter()
            step_times.append(now - last)
            last = now
        previous = out
    jax.device_get(previous)
    decode_s = time.perf_counter() - start
    return {"prefill_s": prefill_s, "decode_s": decode_s, "step_s": statistics.median(step_times)}


def engine_runs(engine: Engine, prompts: np.ndarray, new: int, weight_bytes: int | None = None,
                repeats: int = 3, temperature: float = 0.0) -> dict:
    """The median of `repeats` runs, phase by phase (one run is a few seconds: noise on a shared machine).
    Given `weight_bytes`, also `read_s`: the median of weight reads timed before, between and after
    the runs (10 each), so the roofline is measured in the same minutes as the steps set against it."""
    engine_run(engine, prompts, 8, temperature)  # the first runs touch fresh buffers
    reads, runs = [], []
    for _ in range(repeats):
        if weight_bytes:
            reads.append(read_seconds(weight_bytes, statistic=statistics.median))
        runs.append(engine_run(engine, prompts, new, temperature))
    if weight_bytes:
        reads.append(read_seconds(weight_bytes, statistic=statistics.median))
    medians = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
    return {**medians, "read_s": statistics.median(reads)} if weight_bytes else medians


def naive_run(cfg, graphdef, state, prompts: np.ndarray, new: int) -> dict:
    """The straightforward loop: no donation, logits to the host every token, argmax there."""
    batch, length = prompts.shape
    graphdef, state = to_per_layer(graphdef, state)  # the layout that takes a KV cache
    step = jax.jit(forward, static_argnums=0)
    cache = KVCache.init(cfg, batch, length + new)
    ones = jnp.ones((batch, length), jnp.int32)
    positions = jnp.broadcast_to(jnp.arange(length), (batch, length))
    start = time.perf_counter()
    logits, cache = step(graphdef, state, jnp.asarray(prompts), positions, ones, cache)
    token = np.argmax(np.asarray(logits[:, -1]), -1)
    prefill_s = time.perf_counter() - start
    start = time.perf_counter()
    for i in range(new - 1):
        logits, cache = step(graphdef, state, jnp.asarray(token[:, None]), jnp.full((batch, 1), length + i),
                             ones[:, :1], cache)
        token = np.argmax(np.asarray(logits[:, -1]), -1)
    return {"prefill_s": prefill_s, "decode_s": time.perf_counter() - start}


def hf_run(cfg, prompts: np.ndarray, new: int) -> float:
    """Seconds for HF generate() (greedy, exactly `new` tokens, KV cache), end to end."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.mlp_dim,
        num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads,
        head_dim=cfg.head_dim, max_position_embeddings=prompts.shape[1] + new, rms_norm_eps=cfg.norm_eps,
        rope_theta=cfg.rope_base, tie_word_embeddings=cfg.tie_embeddings,
    )).float().eval()
    inputs = torch.from_numpy(prompts).long()
    with torch.no_grad():
        model.generate(inputs[:, :8], max_new_tokens=4, min_new_tokens=4, do_sample=False)  # warm up
        start = time.perf_counter()
        model.generate(inputs, attention_mask=torch.ones_like(inputs), max_new_tokens=new, min_new_tokens=new,
                       do_sample=False, pad_token_id=0)
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--new", type=int, default=128)
    parser.add_argument("--vs-hf", action="store_true", help="also time HF generate() in PyTorch (`bench` extra)")
    parser.add_argument("--naive", action="store_true", help="also time the straightforward jitted loop")
    parser.add_argument("--int8", action="store_true", help="int8 weights in the engine (serve.int8_weights)")
    parser.add_argument("--sampled", action="store_true", help="draw every row at temperature 1 (not greedy)")
    args = parser.parse_args()

    cfg, graphdef, state, mesh = bench_model()
    params = counted_params(cfg)
    held = prepare_for_decoding(cfg, graphdef, state, int8=True)[1] if args.int8 else state
    weight_bytes = sum(leaf.nbytes for leaf in jax.tree.leaves(held))
    roofline = {"bench": "roofline", "params": params, "weight_bytes": weight_bytes,
                "weight_read_s": round(read_seconds(weight_bytes), 5), "matmul_peak_flops": round(matmul_peak_flops()),
                "int8_weights": args.int8, "backend": jax.default_backend(), "jax": jax.__version__}
    print(json.dumps(roofline), flush=True)
    rng = np.random.default_rng(0)
    for batch in args.batches:
        prompts = rng.integers(10, cfg.vocab_size, (batch, args.prompt)).astype(np.int32)
        engine = Engine(cfg, graphdef, state, mesh, slots=batch, cache_len=args.prompt + args.new, eos_id=EOS,
                        real_vocab=cfg.vocab_size, int8_weights=args.int8)
        engine.warm_up()
        run = engine_runs(engine, prompts, args.new, weight_bytes, temperature=1.0 if args.sampled else 0.0)
        read_s = run["read_s"]
        decode_tokens = batch * (args.new - 1)
        result = {"bench": "decode", "batch": batch, "prompt": args.prompt, "new_tokens": args.new,
                  "rows": "sampled" if args.sampled else "greedy",
                  "prefill_tokens_per_s": round(batch * args.prompt / run["prefill_s"], 1),
                  "decode_tokens_per_s": round(decode_tokens / run["decode_s"], 1),
                  "step_s": round(run["step_s"], 5),
                  "weight_read_s": round(read_s, 5), "step_over_weight_read": round(run["step_s"] / read_s, 2),
                  "end_to_end_tokens_per_s": round(batch * args.new / (run["prefill_s"] + run["decode_s"]), 1)}
        if args.naive:
            naive_run(cfg, graphdef, state, prompts, 4)
            naive = naive_run(cfg, graphdef, state, prompts, args.new)
            result["naive_decode_tokens_per_s"] = round(decode_tokens / naive["decode_s"], 1)
        if args.vs_hf:
            hf_s = hf_run(cfg, prompts, args.new)
            result["hf_end_to_end_tokens_per_s"] = round(batch * args.new / hf_s, 1)
            result["engine_over_hf"] = round(result["end_to_end_tokens_per_s"] / result["hf_end_to_end_tokens_per_s"], 2)
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
