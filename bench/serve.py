"""Load over HTTP, like vLLM's benchmark_serving: N requests at concurrency C, a fixed output length.

    python bench/serve.py [--requests 200] [--concurrency 32] [--prompt 128] [--new 128] [--url URL]

Without --url it times the engine alone at batch C (bench/decode.py's run, in this process), then
starts `serve.py --random-init` at the bench shape (configs/bench.py) with C slots in a
subprocess, waits for /health, and sends the requests: streamed completions of C at a time, each a
random `--prompt`-token prompt asking for `--new` tokens. The server sends a chunk per token, so
the client sees each token arrive. When the server has stopped it times the engine alone again:
this machine's speed drifts by tens of percent within minutes, so the HTTP figure is set against
the mean of the engine-alone runs on either side of it. Prints JSON lines: each engine-alone run;
then request throughput, output tokens/s, time to first token and time per output token (p50,
p99), and the HTTP / engine-alone ratios (against the engine's decode rate and its prefill +
decode rate).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def bench_server_flags(slots: int, cache_len: int) -> list[str]:
    """serve.py flags for the bench shape of configs/bench.py."""
    from configs.bench import bench_config

    cfg = bench_config()
    return ["--config", "tiny", "--random-init", f"--model.text-vocab-size={cfg.text_vocab_size}",
            f"--model.d-model={cfg.d_model}", f"--model.num-layers={cfg.num_layers}",
            f"--model.num-heads={cfg.num_heads}", f"--model.num-kv-heads={cfg.num_kv_heads}",
            f"--model.head-dim={cfg.head_dim}", f"--model.mlp-dim={cfg.mlp_dim}", "--model.no-tie-embeddings",
            f"--serve.slots={slots}", f"--serve.max-cache-len={cache_len}", f"--serve.max-tokens={cache_len}"]


def engine_alone(batch: int, prompt: int, new: int):
    """The engine at batch `batch`, compiled; calling the result times it (a dict of tokens/s)."""
    import jax
    from flax import nnx

    from bench.decode import engine_runs
    from configs.base import MeshConfig
    from configs.bench import bench_config
    from model.sharding import make_mesh
    from model.transformer import Transformer
    from serving.engine import Engine

    cfg = bench_config()
    graphdef, state = nnx.split(Transformer(cfg, rngs=nnx.Rngs(0)))
    mesh = make_mesh(MeshConfig(data=1, fsdp=1, tensor=1), devices=jax.devices()[:1])
    engine = Engine(cfg, graphdef, state, mesh, slots=batch, cache_len=prompt + new, eos_id=-1,
                    real_vocab=cfg.vocab_size)
    engine.warm_up()
    prompts = np.random.default_rng(0).integers(10, cfg.vocab_size, (batch, prompt)).astype(np.int32)

    def timed(when: str) -> dict:
        run = engine_runs(engine, prompts, new)
        return {"bench": "engine_alone", "when": when, "batch": batch,
                "decode_tokens_per_s": round(batch * (new - 1) / run["decode_s"], 1),
                "end_to_end_tokens_per_s": round(batch * new / (run["prefill_s"] + run["decode_s"]), 1)}

    return timed


def one_request(url: urllib.parse.ParseResult, prompt: list[int], new: int) -> dict:
    """Stream one completion; the arrival time of every token's chunk."""
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=600)
    body = {"prompt": prompt, "max_tokens": new, "temperature": 0.0, "stream": True}
    start = time.perf_counter()
    conn.request("POST", "/v1/completions", body=json.dumps(body), headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    if response.status != 200:
        return {"error": f"{response.status}: {response.read()[:200]!r}"}
    arrivals = []
    for line in response:  # a chunk per token; the client parses no more than it must (it shares the CPU)
        if line.startswith(b"data: {") and b'"finish_reason": null' in line:
            arrivals.append(time.perf_counter() - start)
    conn.close()
    return {"arrivals": arrivals}


def percentiles(values: list[float]) -> dict | None:
    if not values:
        return None
    return {"p50": round(float(np.percentile(values, 50)), 4), "p99": round(float(np.percentile(values, 99)), 4)}


def load(url: str, requests: int, concurrency: int, prompt: int, new: int, vocab: int) -> dict:
    parsed = urllib.parse.urlparse(url)
    rng = np.random.default_rng(1)
    prompts = [rng.integers(10, vocab, prompt - 1).tolist() for _ in range(requests)]  # the server adds <bos>
    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(lambda p: one_request(parsed, p, new), prompts))
    seconds = time.perf_counter() - start
    errors = [r["error"] for r in results if "error" in r]
    done = [r["arrivals"] for r in results if "arrivals" in r and r["arrivals"]]
    tokens = sum(len(a) for a in done)
    ttft = [a[0] for a in done]
    tpot = [(a[-1] - a[0]) / (len(a) - 1) for a in done if len(a) > 1]
    return {"bench": "serve_http", "requests": requests, "concurrency": concurrency, "prompt": prompt,
            "new_tokens": new, "completed": len(done), "errors": len(errors), "first_error": errors[:1],
            "seconds": round(seconds, 2), "request_throughput_per_s": round(len(done) / seconds, 3),
            "output_tokens_per_s": round(tokens / seconds, 1), "output_tokens": tokens,
            "ttft_s": percentiles(ttft), "tpot_s": percentiles(tpot)}


def start_server(port: int, slots: int, cache_len: int) -> subprocess.Popen:
    command = [sys.executable, str(ROOT / "serve.py"), *bench_server_flags(slots, cache_len), f"--serve.port={port}"]
    # The log goes to a file: a pipe nobody reads would block the server once the access log fills it.
    log = tempfile.TemporaryFile()
    server = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.time() + 600
    while time.time() < deadline:
        if server.poll() is not None:
            log.seek(0)
            raise RuntimeError(f"serve.py exited: {log.read().decode()[-2000:]}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                return server
        except OSError:
            pass
        time.sleep(0.5)
    server.kill()
    raise RuntimeError("serve.py did not become healthy in 600 s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--new", type=int, default=128)
    parser.add_argument("--url", default=None, help="load a running server instead of starting one")
    args = parser.parse_args()
    from configs.bench import bench_config

    vocab = bench_config().vocab_size
    if args.url:
        print(json.dumps(load(args.url, args.requests, args.concurrency, args.prompt, args.new, vocab)))
        return
    time_engine = engine_alone(args.concurrency, args.prompt, args.new)
    before = time_engine("before")
    print(json.dumps(before), flush=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = start_server(port, args.concurrency, args.prompt + args.new)
    try:
        result = load(f"http://127.0.0.1:{port}", args.requests, args.concurrency, args.prompt, args.new, vocab)
    finally:
        server.kill()  # its figures are taken; the engine-alone run below needs the cores to itself
        server.wait()
    after = time_engine("after")
    print(json.dumps(after), flush=True)
    for rate in ("decode", "end_to_end"):
        alone = (before[f"{rate}_tokens_per_s"] + after[f"{rate}_tokens_per_s"]) / 2
        result[f"over_engine_{rate}"] = round(result["output_tokens_per_s"] / alone, 3)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
