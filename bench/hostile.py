"""What a hostile client costs the server: the attacks of the hardening issue, timed.

    python bench/hostile.py [--url URL]

Without --url it starts `python serve.py --config tiny --random-init` on a free port and waits for
/health. Then, one attack at a time, it measures what the attacker gets (status, seconds) and what
everyone else sees meanwhile (the slowest /health answer while the attack is in flight, polled
every 20 ms). Prints one JSON line per attack. Compare runs on the same machine: the seconds move
with the host; the statuses and the ratios are the figures.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import http.client
import io
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.parse
import wave
from pathlib import Path

import numpy as np
from PIL import Image


def call(url: str, method: str, path: str, body=None, timeout: float = 120.0) -> tuple[int, bytes]:
    parsed = urllib.parse.urlparse(url)
    conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=timeout)
    data = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
    conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    reply = response.read()
    conn.close()
    return response.status, reply


def under_attack(url: str, attack) -> dict:
    """Run `attack()` (returns its status) on a thread; poll /health meanwhile."""
    result, health = {}, []

    def run():
        started = time.perf_counter()
        result["status"] = attack()
        result["seconds"] = round(time.perf_counter() - started, 3)

    thread = threading.Thread(target=run)
    thread.start()
    while thread.is_alive():
        started = time.perf_counter()
        call(url, "GET", "/health")
        health.append(time.perf_counter() - started)
        time.sleep(0.02)
    thread.join()
    return {**result, "slowest_health_s": round(max(health, default=0.0), 3)}


def wav(seconds: float, rate: int = 16000, claimed_rate: int | None = None) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(rate)
        w.writeframes((np.sin(np.arange(int(seconds * rate)) * 0.3) * 9000).astype(np.int16).tobytes())
    data = bytearray(buffer.getvalue())
    if claimed_rate is not None:
        data[24:28] = struct.pack("<I", claimed_rate)
    return bytes(data)


def audio_chat(data: bytes) -> dict:
    part = {"type": "input_audio", "input_audio": {"data": base64.b64encode(data).decode(), "format": "wav"}}
    return {"messages": [{"role": "user", "content": [part]}], "max_tokens": 1}


def attacks(url: str) -> dict:
    png = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(png, format="PNG")
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(png.getvalue()).decode()}}
    post = lambda body: lambda: call(url, "POST", "/v1/completions" if "prompt" in body else "/v1/chat/completions",
                                     body)[0]
    return {
        "7.6 MB completions prompt": post({"prompt": "the small red circle " * 360_000, "max_tokens": 1}),
        "190,000-character prompt (tokenized)": post({"prompt": "the small red circle " * 9_000, "max_tokens": 1}),
        "20,000 prompts x n=8": post({"prompt": ["a"] * 20_000, "n": 8, "max_tokens": 1}),
        "12,000 pictures in one message": post({"messages": [{"role": "user", "content": [image] * 12_000}]}),
        "1 KB WAV at 1,000,003 Hz": post(audio_chat(wav(0.03, claimed_rate=1_000_003))),
        "WAV claiming 4,294,967,295 Hz": post(audio_chat(wav(0.03, claimed_rate=4_294_967_295))),
        "token id 2**64": post({"prompt": [5, 2**64], "max_tokens": 1}),
        "top_k 2**40": post({"prompt": "a", "top_k": 2**40, "max_tokens": 1}),
        "lone surrogate": lambda: call(url, "POST", "/v1/completions", b'{"prompt": "a\\ud800", "max_tokens": 1}')[0],
        "n above max_queue": post({"prompt": ["a"] * 64, "n": 8, "max_tokens": 1}),
        "video_url part": post({"messages": [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": "x"}}]}]}),
    }


def audio_lengths(url: str) -> dict:
    """Seconds per request for clips of lengths never sent before (each used to compile anew)."""
    seconds = []
    for i in range(8):
        started = time.perf_counter()
        status, _ = call(url, "POST", "/v1/chat/completions", audio_chat(wav(0.5 + 0.0371 * i)))
        assert status == 200, status
        seconds.append(time.perf_counter() - started)
    return {"attack": "8 clips of new lengths (0.50-0.76 s)", "first_s": round(seconds[0], 3),
            "median_after_s": round(float(np.median(seconds[1:])), 3)}


def metrics_growth(url: str) -> dict:
    before = len(call(url, "GET", "/metrics")[1])
    for i in range(2000):
        call(url, "GET", f"/no/such/route/{i}")
    return {"attack": "2,000 requests to distinct unknown paths", "metrics_bytes_before": before,
            "metrics_bytes_after": len(call(url, "GET", "/metrics")[1])}


def idle_connections(url: str, count: int = 150, wait_s: float = 12.0) -> dict:
    parsed = urllib.parse.urlparse(url)
    socks = []
    for i in range(count):
        sock = socket.create_connection((parsed.hostname, parsed.port), timeout=wait_s + 5)
        sock.sendall(b"" if i % 2 else b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-")
        socks.append(sock)
    time.sleep(wait_s)
    closed = 0
    for sock in socks:
        sock.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            closed += sock.recv(1) == b""
        sock.close()
    return {"attack": f"{count} idle or half-sent connections", "closed_after_s": wait_s, "closed": closed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="a running server (default: start serve.py --config tiny --random-init)")
    parser.add_argument("--skip", nargs="*", default=[], help="attacks to leave out (a part of their name), e.g. "
                        "'4,294,967,295' against a server that would try to allocate 128 GiB")
    args = parser.parse_args()
    server = None
    url = args.url
    if url is None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        root = Path(__file__).resolve().parent.parent
        server = subprocess.Popen([sys.executable, "serve.py", "--config", "tiny", "--random-init", "--serve.port",
                                   str(port)], cwd=root, env={**os.environ, "PYTHONPATH": str(root)},
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 300
        while time.time() < deadline:
            with contextlib.suppress(OSError):
                if call(url, "GET", "/health", timeout=5)[0] == 200:
                    break
            time.sleep(0.5)
    try:
        for name, attack in attacks(url).items():
            if any(part in name for part in args.skip):
                continue
            print(json.dumps({"attack": name, **under_attack(url, attack)}), flush=True)
        for measure in (audio_lengths, metrics_growth, idle_connections):
            print(json.dumps(measure(url)), flush=True)
    finally:
        if server is not None:
            server.terminate()
            server.wait(30)


if __name__ == "__main__":
    main()
