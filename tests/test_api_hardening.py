"""What a hostile client tries against the live server: each gets a 4xx that names the field and
the limit, or is dropped, and the server stays healthy and fast for everyone else."""

import base64
import http.server
import io
import socket
import struct
import threading
import time
import wave

import numpy as np
import pytest

from parallel.sharding import make_mesh
from serving.connections import uvicorn_config
from serving.media import FetchPolicy
from serving.server import make_server
from tests.serving_helpers import SERVE_CFG, data_url, png_bytes, replace_serve, served_model, serving_live

CHAT = "/v1/chat/completions"
COMPLETE = "/v1/completions"


def chat_of(*parts) -> dict:
    return {"messages": [{"role": "user", "content": list(parts)}], "max_tokens": 2}


def image_part(url: str) -> dict:
    return {"type": "image_url", "image_url": {"url": url}}


def audio_part(data: bytes) -> dict:
    return {"type": "input_audio", "input_audio": {"data": base64.b64encode(data).decode(), "format": "wav"}}


def wav_claiming(rate: int, samples: int = 500) -> bytes:
    """A small WAV whose header claims `rate` Hz (wave refuses to write rates past 2**31)."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(16000)
        w.writeframes(np.zeros(samples, np.int16).tobytes())
    data = bytearray(buffer.getvalue())
    data[24:28] = struct.pack("<I", rate)  # the fmt chunk's sample rate
    return bytes(data)


def expect_400(live, path, body, *mentions) -> dict:
    status, _, reply = live.post(path, body)
    assert status == 400, reply
    error = reply["error"]
    for mention in mentions:
        assert mention in error["message"], error
    assert live.post(COMPLETE, {"prompt": "a", "max_tokens": 2})[0] == 200  # and everyone else is served
    return error


# ---- 500s that are the caller's mistakes -----------------------------------------------------


def test_a_token_id_past_2_63_is_a_400_not_an_overflow(live):
    expect_400(live, COMPLETE, {"prompt": [5, 2**64], "max_tokens": 2}, "prompt[0]", "token ids must lie in")
    expect_400(live, COMPLETE, {"prompt": [[5], [7, -(2**70)]], "max_tokens": 2}, "prompt[1]")


def test_a_top_k_past_2_31_means_no_limit(live):
    status, _, reply = live.post(COMPLETE, {"prompt": "a", "max_tokens": 3, "top_k": 2**40, "seed": 2**70})
    assert status == 200, reply


@pytest.mark.parametrize("where", ["prompt", "chat text", "stop", "model"])
def test_a_lone_surrogate_anywhere_is_a_400_naming_the_field(live, where):
    bodies = {
        "prompt": (COMPLETE, '{"prompt": "a\\ud800b", "max_tokens": 2}', "prompt"),
        "chat text": (CHAT, '{"messages": [{"role": "user", "content": [{"type": "text", "text": "\\udfff"}]}]}',
                      "messages[0].content[0].text"),
        "stop": (COMPLETE, '{"prompt": "a", "stop": ["\\ud83d"], "max_tokens": 2}', "stop"),
        "model": (COMPLETE, '{"prompt": "a", "model": "\\ud800", "max_tokens": 2}', "model"),
    }
    path, body, field = bodies[where]
    error = expect_400(live, path, body, "lone surrogate")
    assert error["param"].startswith(field), error


@pytest.mark.parametrize("rate", [4_294_967_295, 1_000_003, 999])
def test_a_wav_at_a_rate_out_of_bounds_is_a_400_before_any_resampling(live, rate):
    error = expect_400(live, CHAT, chat_of(audio_part(wav_claiming(rate))), f"{rate} Hz", "1000-48000 Hz")
    assert error["param"] == "messages[0].content[0].input_audio"


def test_reported_logprobs_never_name_an_id_that_is_no_token(live, vocab):
    assert vocab.text.size < vocab.image_offset  # the test's text range is wider than its pieces
    body = {"prompt": "a small", "max_tokens": 30, "temperature": 2.0, "top_p": 1.0, "logprobs": 5, "n": 4,
            "seed": 3}
    status, _, reply = live.post(COMPLETE, body)
    assert status == 200, reply
    reported = [t for c in reply["choices"] for t in c["logprobs"]["tokens"]]
    assert len(reported) > 60 and not [t for t in reported if t.startswith("<unused:")]
    assert live.server.token_text(vocab.text.size) == f"<unused:{vocab.text.size}>"  # and reporting one never fails


# ---- refused before any work -----------------------------------------------------------------


def test_more_prompts_or_generations_than_the_server_takes_are_400s_naming_the_limit(live):
    expect_400(live, COMPLETE, {"prompt": ["a"] * 65, "max_tokens": 1}, "serve.max_prompts")
    error = expect_400(live, COMPLETE, {"prompt": ["a"] * 40, "n": 8, "max_tokens": 1}, "serve.max_queue")
    assert error["param"] == "n" and error["code"] == "too_many_choices"


def test_a_prompt_over_the_character_limit_is_refused_before_tokenizing(live, monkeypatch):
    tokenized = []
    encode = live.server.vocab.encode
    monkeypatch.setattr(live.server.vocab, "encode", lambda *a, **k: (tokenized.append(1), encode(*a, **k))[1])
    status, _, reply = live.post(COMPLETE, {"prompt": "a " * 100_001, "max_tokens": 1})
    assert status == 400 and "serve.max_prompt_chars" in reply["error"]["message"] and not tokenized


def test_pictures_that_cannot_fit_the_context_are_refused_before_any_is_decoded(live):
    undecodable = image_part(data_url(b"not a picture at all"))  # decoding it first would be a different 400
    error = expect_400(live, CHAT, chat_of(*[undecodable] * 12_000), "12000 picture(s)", "serve.max_cache_len")
    assert error["code"] == "context_length_exceeded"


def test_a_huge_prompt_does_not_stall_the_other_routes(live):
    """Tokenizing runs off the event loop: /health answers while a prompt of 800 KB is tokenized."""
    live.server.cfg = replace_serve(SERVE_CFG, max_prompt_chars=10**8)
    tokenizing = threading.Event()
    encode = live.server.vocab.encode

    def slow_encode(*args, **kwargs):
        tokenizing.set()
        time.sleep(1.5)  # stands in for seconds of SentencePiece on megabytes
        return encode(*args, **kwargs)

    live.server.vocab.encode = slow_encode
    try:
        result = {}
        thread = threading.Thread(target=lambda: result.update(
            reply=live.post(COMPLETE, {"prompt": "the cat " * 100_000, "max_tokens": 1})))
        thread.start()
        assert tokenizing.wait(30)
        health, _, _ = live.call("GET", "/health")
        still_tokenizing = thread.is_alive()
        thread.join(60)
    finally:
        del live.server.vocab.encode
        live.server.cfg = SERVE_CFG
    assert health == 200 and still_tokenizing  # answered while the big prompt was still being tokenized
    assert result["reply"][0] == 400  # far over the context


def test_an_unsupported_content_part_names_its_type_and_the_accepted_ones(live):
    body = {"messages": [{"role": "user", "content": [{"type": "text", "text": "look"},
                                                      {"type": "file", "file": {"file_id": "x"}}]}]}
    error = expect_400(live, CHAT, body, "'file' is not supported", "'image_url'", "'input_audio'", "'video_url'")
    assert error["param"] == "messages[0].content[1].type"


# ---- remote images ---------------------------------------------------------------------------


@pytest.fixture
def origin():
    """An image host on 127.0.0.1: /picture.png, /redirect (302 to it), /trickle (a byte at a time)."""
    image = png_bytes((40, 70, 220))

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path == "/redirect":
                self.send_response(302)
                self.send_header("Location", "/picture.png")
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.end_headers()
            if self.path == "/trickle":
                try:
                    for byte in image:
                        self.wfile.write(bytes([byte]))
                        self.wfile.flush()
                        time.sleep(0.05)
                except OSError:
                    pass
                return
            self.wfile.write(image)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", f"http://localhost:{server.server_address[1]}"
    server.shutdown()


def test_a_remote_image_is_fetched_only_from_an_allowed_host_at_an_allowed_address(live, origin):
    by_ip, by_name = origin
    try:
        expect_400(live, CHAT, chat_of(image_part(f"{by_ip}/picture.png")), "--allow-image-host")
        live.server.fetch_policy = FetchPolicy(hosts=("127.0.0.1", "localhost"))
        expect_400(live, CHAT, chat_of(image_part(f"{by_ip}/picture.png")), "not a public address")
        expect_400(live, CHAT, chat_of(image_part(f"{by_name}/picture.png")), "'localhost' resolves to",
                   "not a public address")
        live.server.fetch_policy = FetchPolicy(hosts=("127.0.0.1",), private_addresses=True)
        status, _, reply = live.post(CHAT, chat_of(image_part(f"{by_ip}/picture.png")))
        assert status == 200, reply
        status, _, reply = live.post(CHAT, chat_of(image_part(f"{by_ip}/pïcture.png?size=grand é")))  # quoted
        assert status == 200, reply
    finally:
        live.server.fetch_policy = FetchPolicy()


def test_a_redirect_is_refused_not_followed(live, origin):
    by_ip, _ = origin
    live.server.fetch_policy = FetchPolicy(hosts=("127.0.0.1",), private_addresses=True)
    try:
        expect_400(live, CHAT, chat_of(image_part(f"{by_ip}/redirect")), "302", "redirects are not followed")
    finally:
        live.server.fetch_policy = FetchPolicy()


def test_a_fetch_has_one_deadline_however_the_bytes_trickle(live, origin):
    by_ip, _ = origin  # every byte within a per-read timeout; the whole far past the deadline
    live.server.fetch_policy = FetchPolicy(hosts=("127.0.0.1",), private_addresses=True, timeout_s=0.5)
    try:
        expect_400(live, CHAT, chat_of(image_part(f"{by_ip}/trickle")), "serve.fetch_timeout_s=0.5")
    finally:
        live.server.fetch_policy = FetchPolicy()


# ---- the server's own state ------------------------------------------------------------------


def test_metrics_label_requests_by_route_not_by_the_path_sent(live):
    live.server.api_key = "sesame"
    try:
        for i in range(40):
            live.call("GET", f"/no/such/path/{i}")
            live.post(f"/v1/completions?{i}", {"prompt": "a"})  # 401, unauthenticated
    finally:
        live.server.api_key = None
    _, _, text = live.call("GET", "/metrics")
    routes = {line.split('route="')[1].split('"')[0] for line in text.splitlines() if line.startswith("serve_requests_total")}
    assert routes <= {"/health", "/metrics", "/v1/models", "/v1/completions", "/v1/chat/completions", "unmatched"}
    assert "unmatched" in routes and "/v1/completions" in routes


def test_slow_clients_are_dropped_at_their_deadlines(live):
    """SERVE_CFG gives headers and bodies 2 s each: idle and half-sent connections are closed, a
    half-sent body gets 408, and the server answers everyone else meanwhile."""
    def connect(data: bytes) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", live.port), timeout=15)
        sock.sendall(data)
        return sock

    idle = [connect(b"") for _ in range(20)]
    half_headers = [connect(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-") for _ in range(10)]
    half_body = [connect(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 100\r\n\r\n{\"prompt\"") for _ in range(5)]
    assert live.post(COMPLETE, {"prompt": "a", "max_tokens": 2})[0] == 200
    for sock in idle + half_headers:
        assert sock.recv(1024) == b"", "the server kept a connection that never sent its headers"
        sock.close()
    for sock in half_body:
        reply = sock.recv(4096)
        assert reply.startswith(b"HTTP/1.1 408") and b"serve.body_timeout_s" in reply, reply
        sock.close()
    live.healthy()


def test_the_connection_limits_reach_uvicorn():
    serve = SERVE_CFG.serve
    config = uvicorn_config(None, serve)
    assert config.limit_concurrency == serve.max_connections and config.timeout_keep_alive == serve.keep_alive_s
    assert config.http.header_timeout_s == serve.header_timeout_s


@pytest.mark.slow  # builds and serves a second engine
def test_health_reports_a_dead_scheduler_and_requests_get_503(vocab):
    graphdef, state = served_model()
    server = make_server(SERVE_CFG, vocab, graphdef, state, make_mesh(SERVE_CFG.mesh))
    with serving_live(server) as live:
        assert live.healthy()["status"] == "ok"

        def broken(*_):
            raise RuntimeError("the device is gone")

        server.engine.step = broken
        server.engine.reset = broken  # the scheduler's recovery fails too: its thread ends
        status, _, reply = live.post(COMPLETE, {"prompt": "a", "max_tokens": 5})
        assert status == 500 and "the device is gone" in reply["error"]["message"]
        server.scheduler.thread.join(10)
        status, _, health = live.call("GET", "/health")
        assert status == 503 and health["error"]["code"] == "scheduler_down", health
        assert "the device is gone" in health["error"]["message"]
        status, _, reply = live.post(COMPLETE, {"prompt": "a", "max_tokens": 2})
        assert status == 503 and reply["error"]["code"] == "scheduler_down"
