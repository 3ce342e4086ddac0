"""Load over HTTP, like vLLM's benchmark_serving: N requests at concurrency C, a fixed output length;
and a chat's second turn with the prefix cache on and off.

    python bench/serve.py [--requests 200] [--concurrency 32] [--prompt 128] [--new 128] [--rounds 3] [--url URL]
                          [--prefix-cache-tokens N]
    python bench/serve.py --second-turn [--conversations 8]

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

`--prefix-cache-tokens` sets the server's prefix cache (serve.prefix_cache_tokens; 0: off). The
random prompts share no prefix, so this load measures what the cache costs when it never hits.

`--second-turn` starts two servers at the bench shape, one with the prefix cache and one without,
and has each hold the same conversations, alternating: turn 1 is a picture (a PNG data URL) and
~400 tokens of text; turn 2 re-sends turn 1 and its reply with a short question, as every chat
client does. It prints the time to first token of turn 2 on each server (p50 over
`--conversations`) and their ratio; the server with the cache prefills only what follows turn 1's
cached blocks.

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
from data import world
from serving.engine import Engine
from serving.media import png_data_url

ROOT = Path(__file__).resolve().parent.parent
TOKEN_CHUNK = b'"finish_reason": null'  # in every chunk that carries a token, and in no other


def bench_server_flags(slots: int, cache_len: int, prefix_cache_tokens: int | None = None) -> list[str]:
    """serve.py flags for the bench shape of configs/bench.py (the prefix cache: the config's default)."""
    cfg = bench_config()
    return ["--config", "tiny", "--random-init", f"--model.text-vocab-size={cfg.text_vocab_size}",
            f"--model.d-model={cfg.d_model}", f"--model.num-layers={cfg.num_layers}",
            f"--model.num-heads={cfg.num_heads}", f"--model.num-kv-heads={cfg.num_kv_heads}",
            f"--model.head-dim={cfg.head_dim}", f"--model.mlp-dim={cfg.mlp_dim}", "--model.no-tie-embeddings",
            f"--model.max-seq-len={max(cfg.max_seq_len, cache_len)}", f"--serve.slots={slots}", f"--serve.max-cache-len={cache_len}", f"--serve.max-tokens={cache_len}",
            *([f"--serve.prefix-cache-tokens={prefix_cache_tokens}"] if prefix_cache_tokens is not None else [])]


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


def start_server(port: int, slots: int, cache_len: int, prefix_cache_tokens: int | None = None) -> subprocess.Popen:
    command = [sys.executable, str(ROOT / "serve.py"), *bench_server_flags(slots, cache_len, prefix_cache_tokens),
               f"--serve.port={port}"]
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def chat_turn(port: int, messages: list[dict], max_tokens: int) -> tuple[float, str, int]:
    """Stream one chat completion: (seconds to its first token, its text, its prompt's tokens)."""
    body = json.dumps({"messages": messages, "max_tokens": max_tokens, "temperature": 0.0, "stream": True,
                       "stream_options": {"include_usage": True}})
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    start = time.perf_counter()
    conn.request("POST", "/v1/chat/completions", body=body, headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    if response.status != 200:
        raise RuntimeError(f"chat turn: {response.status} {response.read()[:300]!r}")
    first, text, prompt_tokens = None, "", 0
    for line in response:
        if not line.startswith(b"data: {"):
            continue
        chunk = json.loads(line[len(b"data: "):])
        if chunk.get("usage"):
            prompt_tokens = chunk["usage"]["prompt_tokens"]
        for choice in chunk["choices"]:
            if "role" not in choice["delta"] and first is None:  # the first chunk carries the role, no token
                first = time.perf_counter() - start
            text += choice["delta"].get("content") or ""
    conn.close()
    return first, text, prompt_tokens


def conversation(seed: int) -> tuple[list[dict], dict]:
    """Turn 1 (a rendered picture and ~400 tokens of the world's text) and turn 2's question."""
    rng = np.random.default_rng(seed)
    attributes = world.sample_attributes(rng, "train")
    pixels = world.render_image(rng, *attributes)
    history = " ".join(world.caption(*world.sample_attributes(rng, "train")) + "." for _ in range(40))
    turn1 = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": png_data_url(pixels)}},
                                          {"type": "text", "text": "Earlier we saw: " + history + " Describe the picture."}]}]
    return turn1, {"role": "user", "content": "What colour is it?"}


def second_turn(conversations: int) -> None:
    """Turn 2's time to first token with the prefix cache and without, the servers alternating."""
    servers = {}
    try:
        for name, tokens in (("cache_off", 0), ("cache_on", None)):
            port = free_port()
            servers[name] = (port, start_server(port, 4, 1024, tokens))
        ttft: dict[str, list[float]] = {name: [] for name in servers}
        for index in range(-1, conversations):  # conversation -1 warms both servers up, unmeasured
            turn1, question = conversation(index + 1)
            for name, (port, _) in servers.items():
                _, reply, history_tokens = chat_turn(port, turn1, 16)
                turn2 = [*turn1, {"role": "assistant", "content": reply}, question]
                first, _, prompt_tokens = chat_turn(port, turn2, 16)
                if index >= 0:
                    ttft[name].append(first)
                    print(json.dumps({"bench": "second_turn", "server": name, "conversation": index,
                                      "turn1_prompt_tokens": history_tokens, "turn2_prompt_tokens": prompt_tokens,
                                      "turn2_ttft_s": round(first, 4)}), flush=True)
    finally:
        for _, server in servers.values():
            server.kill()
            server.wait()
    p50 = {name: float(np.median(times)) for name, times in ttft.items()}
    print(json.dumps({"bench": "second_turn_summary", "conversations": conversations,
                      "turn2_ttft_p50_s": {name: round(t, 4) for name, t in p50.items()},
                      "cache_off_over_cache_on": round(p50["cache_off"] / p50["cache_on"], 2)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--new", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3, help="HTTP runs, each between two engine-alone runs")
    parser.add_argument("--url", default=None, help="load a running server instead of starting one")
    parser.add_argument("--prefix-cache-tokens", type=int, default=None,
                        help="the server's serve.prefix_cache_tokens (default: the config's; 0: off)")
    parser.add_argument("--second-turn", action="store_true", help="a chat's second turn, prefix cache on and off")
    parser.add_argument("--conversations", type=int, default=8, help="with --second-turn: conversations measured")
    args = parser.parse_args()
    if args.second_turn:
        second_turn(args.conversations)
        return
    vocab = bench_config().vocab_size
    shape = (args.concurrency, args.prompt, args.new, vocab)
    if args.url:
        print(json.dumps(load(args.url, args.requests, *shape)))
        return
    time_engine = engine_alone(args.concurrency, args.prompt, args.new)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = start_server(port, args.concurrency, args.prompt + args.new, args.prefix_cache_tokens)
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
