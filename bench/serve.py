"""Load over HTTP, like vLLM's benchmark_serving: N requests at concurrency C, a fixed output length.

    python bench/serve.py [--requests 200] [--concurrency 32] [--prompt 128] [--new 128] [--rounds 3] [--url URL]

Without --url it compiles the engine alone at batch C (bench/decode.py's run, in this process),
starts `serve.py --random-init` at the bench shape (configs/bench.py) with C slots in a
subprocess, waits for /health and sends it one unmeasured wave of C requests. Then it alternates,
`--rounds` times: the engine alone, the requests over HTTP; and the engine alone once more. Each
HTTP round is set against the mean of the engine-alone runs on either side of it, because this
machine's speed drifts by tens of percent within minutes. The requests are streamed completions,
C at a time, each a random `--prompt`-token prompt asking for `--new` tokens; the server sends a
chunk per token, so the client sees each token arrive. Prints JSON lines: each engine-alone run;
each round's request throughput, output tokens/s, time to first token and time per output token
(p50, p99) and its HTTP / engine-alone ratios (against the engine's decode rate and its prefill +
decode rate); then the rounds' median ratios.

The load generator shares the machine's cores with the server, so it does as little as it can:
one asyncio loop (32 threads blocked in http.client took 1.3 CPU-s a round, this 0.55), which
counts the token chunks in what arrives without parsing them.
"""

from __future__ import annotations

import argparse
import asyncio
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

from bench.decode import bench_model, engine_runs
from configs.bench import bench_config
from serving.engine import Engine

ROOT = Path(__file__).resolve().parent.parent
TOKEN_CHUNK = b'"finish_reason": null'  # in every chunk that carries a token, and in no other


def bench_server_flags(slots: int, cache_len: int) -> list[str]:
    """serve.py flags for the bench shape of configs/bench.py."""
    cfg = bench_config()
    return ["--config", "tiny", "--random-init", f"--model.text-vocab-size={cfg.text_vocab_size}",
            f"--model.d-model={cfg.d_model}", f"--model.num-layers={cfg.num_layers}",
            f"--model.num-heads={cfg.num_heads}", f"--model.num-kv-heads={cfg.num_kv_heads}",
            f"--model.head-dim={cfg.head_dim}", f"--model.mlp-dim={cfg.mlp_dim}", "--model.no-tie-embeddings",
            f"--serve.slots={slots}", f"--serve.max-cache-len={cache_len}", f"--serve.max-tokens={cache_len}"]


def engine_alone(batch: int, prompt: int, new: int):
    """The engine at batch `batch`, compiled; calling the result times it (a dict of tokens/s)."""
    cfg, graphdef, state, mesh = bench_model()
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


async def one_request(url: urllib.parse.ParseResult, prompt: list[int], new: int) -> dict:
    """Stream one completion; when each token's chunk arrived, in seconds from the request."""
    body = json.dumps({"prompt": prompt, "max_tokens": new, "temperature": 0.0, "stream": True}).encode()
    try:
        reader, writer = await asyncio.open_connection(url.hostname, url.port)
    except OSError as error:
        return {"error": f"connect: {error}"}
    start = time.perf_counter()
    writer.write(b"POST /v1/completions HTTP/1.1\r\nHost: %b\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\nConnection: close\r\n\r\n%b" % (url.netloc.encode(), len(body), body))
    try:
        status = await reader.readline()
        if not status.startswith(b"HTTP/1.1 200 "):
            return {"error": (status + await reader.read())[:300].decode(errors="replace")}
        arrivals, tail = [], b""
        while data := await reader.read(1 << 16):  # until the server closes: the response is over
            now = time.perf_counter() - start
            seen = tail + data  # a marker split between two reads is counted once, in the second
            arrivals += [now] * seen.count(TOKEN_CHUNK)
            tail = seen[-(len(TOKEN_CHUNK) - 1):]
        return {"arrivals": arrivals}
    finally:
        writer.close()


def percentiles(values: list[float]) -> dict | None:
    if not values:
        return None
    return {"p50": round(float(np.percentile(values, 50)), 4), "p99": round(float(np.percentile(values, 99)), 4)}


def load(url: str, requests: int, concurrency: int, prompt: int, new: int, vocab: int, seed: int = 1) -> dict:
    parsed = urllib.parse.urlparse(url)
    rng = np.random.default_rng(seed)
    prompts = [rng.integers(10, vocab, prompt - 1).tolist() for _ in range(requests)]  # the server adds <bos>

    async def send_all() -> list[dict]:
        slots = asyncio.Semaphore(concurrency)

        async def one(prompt_: list[int]) -> dict:
            async with slots:
                return await one_request(parsed, prompt_, new)

        return await asyncio.gather(*map(one, prompts))

    start = time.perf_counter()
    results = asyncio.run(send_all())
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
    parser.add_argument("--rounds", type=int, default=3, help="HTTP runs, each between two engine-alone runs")
    parser.add_argument("--url", default=None, help="load a running server instead of starting one")
    args = parser.parse_args()
    vocab = bench_config().vocab_size
    shape = (args.concurrency, args.prompt, args.new, vocab)
    if args.url:
        print(json.dumps(load(args.url, args.requests, *shape)))
        return
    time_engine = engine_alone(args.concurrency, args.prompt, args.new)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    server = start_server(port, args.concurrency, args.prompt + args.new)
    try:
        load(url, args.concurrency, *shape, seed=0)  # the server's first requests touch fresh buffers
        alone = [time_engine("before round 1")]
        print(json.dumps(alone[-1]), flush=True)
        rounds = []
        for round_ in range(1, args.rounds + 1):
            result = {"round": round_, **load(url, args.requests, *shape)}
            alone.append(time_engine(f"after round {round_}"))  # the idle server takes no CPU meanwhile
            print(json.dumps(alone[-1]), flush=True)
            for rate in ("decode", "end_to_end"):
                around = (alone[-2][f"{rate}_tokens_per_s"] + alone[-1][f"{rate}_tokens_per_s"]) / 2
                result[f"over_engine_{rate}"] = round(result["output_tokens_per_s"] / around, 3)
            print(json.dumps(result), flush=True)
            rounds.append(result)
    finally:
        server.kill()
        server.wait()
    print(json.dumps({"bench": "serve_http_rounds", "rounds": len(rounds),
                      "completed": [r["completed"] for r in rounds], "requests": args.requests,
                      **{f"median_over_engine_{rate}": round(float(np.median([r[f"over_engine_{rate}"] for r in rounds])), 3)
                         for rate in ("decode", "end_to_end")}}))


if __name__ == "__main__":
    main()
