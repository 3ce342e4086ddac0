"""The HTTP API on a live uvicorn server: OpenAI shapes, streaming, limits, bad input, disconnects, load."""

import base64
import concurrent.futures
import contextlib
import dataclasses
import http.client
import http.server
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data.segments import Text
from parallel.sharding import make_mesh
from serving.server import make_server
from serving.text_stream import TextStream
from tests.serving_helpers import (SERVE_CFG, Live, data_url, free_port, png_bytes, replace_serve, served_model,
                                   serving_live, wav_bytes)


# ---- the routes ------------------------------------------------------------------------------


def test_health_models_and_prometheus_metrics(live):
    assert live.healthy()["status"] == "ok"
    status, _, models = live.call("GET", "/v1/models")
    assert status == 200 and models["data"][0]["id"] == "test-model"
    live.post("/v1/completions", {"prompt": "a small", "max_tokens": 3})
    status, headers, text = live.call("GET", "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    for name in ("serve_queue_depth", "serve_slots_in_use", "serve_time_to_first_token_seconds_bucket",
                 "serve_time_per_output_token_seconds_bucket", "serve_tokens_generated_total"):
        assert name in text, name


def metric(live, name: str) -> float:
    _, _, text = live.call("GET", "/metrics")
    return float(next(line.split()[-1] for line in text.splitlines() if line.startswith(name + " ")))


def test_a_chats_second_turn_reuses_the_first_turns_blocks_and_the_metrics_say_so(live):
    turn1 = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(png_bytes(), "image/png")}},
                                          {"type": "text", "text": "a small red circle in the top left " * 4}]}]
    status, _, first = live.post("/v1/chat/completions", {"messages": turn1, "max_tokens": 4})
    assert status == 200, first
    hits, misses = metric(live, "serve_prefix_cache_hit_tokens_total"), metric(live, "serve_prefix_cache_miss_tokens_total")
    turn2 = [*turn1, first["choices"][0]["message"], {"role": "user", "content": "What colour is it?"}]
    status, _, second = live.post("/v1/chat/completions", {"messages": turn2, "max_tokens": 4})
    assert status == 200, second
    reused = metric(live, "serve_prefix_cache_hit_tokens_total") - hits
    assert reused == first["usage"]["prompt_tokens"] // 16 * 16  # every whole block of turn 1, its picture's codes among them
    assert metric(live, "serve_prefix_cache_miss_tokens_total") - misses == second["usage"]["prompt_tokens"] - reused
    assert metric(live, "serve_prefix_cache_blocks") > 0


@pytest.mark.slow  # builds and serves a second engine
def test_health_is_503_until_the_engine_is_warm(vocab):
    graphdef, state = served_model()
    server = make_server(SERVE_CFG, vocab, graphdef, state, make_mesh(SERVE_CFG.mesh))
    server.engine.warm_up = lambda: time.sleep(3)  # a slow compile, so the window is wide enough to see
    with serving_live(server, wait=False) as live:
        statuses = []
        deadline = time.time() + 30
        while time.time() < deadline and 200 not in statuses:
            with contextlib.suppress(OSError):
                statuses.append(live.call("GET", "/health")[0])
            time.sleep(0.1)
        assert statuses[0] == 503 and statuses[-1] == 200


def test_a_completion_follows_the_openai_shape(live):
    status, _, body = live.post("/v1/completions", {"model": "test-model", "prompt": "a small red", "max_tokens": 5,
                                                    "temperature": 0, "logprobs": 2})
    assert status == 200, body
    assert body["object"] == "text_completion" and body["id"].startswith("cmpl-")
    choice = body["choices"][0]
    assert choice["finish_reason"] in ("stop", "length") and isinstance(choice["text"], str)
    assert len(choice["logprobs"]["tokens"]) == body["usage"]["completion_tokens"] <= 5
    assert all(len(top) == 2 for top in choice["logprobs"]["top_logprobs"])
    # Asked for, they are computed (a greedy step that reports nothing leaves them NaN): NaN <= 0 is False.
    assert all(lp <= 0 for lp in choice["logprobs"]["token_logprobs"])
    assert all(lp <= 0 for top in choice["logprobs"]["top_logprobs"] for lp in top.values())
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]


def test_media_codes_in_a_text_reply_stream_no_text_of_their_own(live, vocab):
    words = vocab.encode([Text("a small red circle")], bos=False, eos=False).ids.tolist()
    picture = [vocab.ids["<boi>"], *(vocab.image_offset + np.arange(6)).tolist(), vocab.ids["<eoi>"]]
    clip = [vocab.ids["<boa>"], *(vocab.audio_offset + np.arange(6)).tolist()]  # left open, as a reply can end
    ids = [*words, *picture, *words, *clip]
    stream = TextStream(live.server.reply_text)  # each token decodes a window, which can start inside a run
    streamed = "".join(stream.push(i) for i in ids) + stream.finish()
    assert streamed == live.server.reply_text(ids) and "a small red circle" in streamed and "\u2047" not in streamed


def test_streaming_and_non_streaming_return_the_same_text(live):
    for path, body in (("/v1/completions", {"prompt": "a large blue", "max_tokens": 20, "temperature": 0}),
                       ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Describe:"}],
                                                 "max_tokens": 20, "temperature": 0})):
        status, _, whole = live.post(path, body)
        assert status == 200, whole
        chunks = live.events(path, body)
        if "messages" in body:
            text = whole["choices"][0]["message"]["content"]
            streamed = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
        else:
            text = whole["choices"][0]["text"]
            streamed = "".join(c["choices"][0]["text"] for c in chunks if c["choices"])
        assert streamed == text
        assert chunks[-1]["choices"][0]["finish_reason"] == whole["choices"][0]["finish_reason"]


def test_a_stop_string_ends_the_reply_before_it_streamed_or_not(live):
    body = {"prompt": "tones", "max_tokens": 60, "temperature": 0}  # the random model's reply holds 13 characters
    full = live.post("/v1/completions", body)[2]["choices"][0]["text"]
    stop = full[len(full) // 2: len(full) // 2 + 3]
    assert len(stop) == 3
    expected = full[: full.index(stop)]
    status, _, cut = live.post("/v1/completions", {**body, "stop": [stop]})
    assert cut["choices"][0]["text"] == expected and cut["choices"][0]["finish_reason"] == "stop"
    streamed = "".join(c["choices"][0]["text"] for c in live.events("/v1/completions", {**body, "stop": stop})
                       if c["choices"])
    assert streamed == expected
    live.wait_idle()


def test_n_seeded_choices_differ_from_each_other_and_repeat_exactly(live):
    body = {"prompt": "a", "max_tokens": 12, "temperature": 1.0, "n": 3, "seed": 7}
    first = [c["text"] for c in live.post("/v1/completions", body)[2]["choices"]]
    again = [c["text"] for c in live.post("/v1/completions", body)[2]["choices"]]
    assert first == again and len(set(first)) > 1


def test_stream_with_usage_ends_with_a_usage_chunk(live):
    chunks = live.events("/v1/completions", {"prompt": "a", "max_tokens": 4, "stream_options": {"include_usage": True}})
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] >= 1


# ---- multimodal ------------------------------------------------------------------------------


def test_an_image_and_an_audio_clip_in_one_chat_message_reach_the_model_as_their_tokens(live, vocab, monkeypatch):
    seen = []
    submit = live.server.scheduler.submit
    monkeypatch.setattr(live.server.scheduler, "submit", lambda request: (seen.append(request.prompt), submit(request)))
    image, audio = png_bytes(), wav_bytes()
    content = [{"type": "text", "text": "Describe the picture:"},
               {"type": "image_url", "image_url": {"url": data_url(image)}},
               {"type": "text", "text": "and the tones:"},
               {"type": "input_audio", "input_audio": {"data": base64.b64encode(audio).decode(), "format": "wav"}}]
    status, _, body = live.post("/v1/chat/completions", {"messages": [{"role": "user", "content": content}],
                                                         "max_tokens": 4})
    assert status == 200, body
    ids = seen[0].tolist()
    image_codes = (vocab.image.encode(image) + vocab.image_offset).tolist()
    audio_codes = (vocab.audio.encode(np.sin(2 * np.pi * 697 * np.arange(16000) / 16000) * 0.3)
                   + vocab.audio_offset).tolist()
    boi, eoi, boa, eoa = (vocab.ids[k] for k in ("<boi>", "<eoi>", "<boa>", "<eoa>"))
    assert ids[ids.index(boi) + 1: ids.index(eoi)] == image_codes
    assert ids[ids.index(boa) + 1: ids.index(eoa)] == audio_codes
    assert ids.index(eoi) < ids.index(boa)  # in the order the parts came
    assert body["usage"]["prompt_tokens"] == len(ids)


def test_asking_for_an_image_returns_a_png_data_url_made_from_image_codes(live):
    status, _, body = live.post("/v1/chat/completions", {
        "messages": [{"role": "user", "content": "Draw: a small red circle in the top left"}],
        "modalities": ["image"], "logprobs": True})
    assert status == 200, body
    message = body["choices"][0]["message"]
    url = message["images"][0]["image_url"]["url"]
    assert url.startswith("data:image/png;base64,")
    picture = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert picture.size == (32, 32)
    tokens = [t["token"] for t in body["choices"][0]["logprobs"]["content"]]
    assert len(tokens) == 64 and all(t.startswith("<image:") for t in tokens)


# ---- limits and bad input --------------------------------------------------------------------

CHAT = "/v1/chat/completions"
COMPLETE = "/v1/completions"


def image_message(url: str) -> dict:
    return {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}]}


def audio_message(data: str, fmt: str = "wav") -> dict:
    return {"messages": [{"role": "user", "content": [{"type": "input_audio",
                                                       "input_audio": {"data": data, "format": fmt}}]}]}


BAD = {
    "malformed JSON": (COMPLETE, '{"prompt": "a", ', 400, "not valid JSON"),
    "not an object": (COMPLETE, "[1, 2]", 400, None),
    "unknown field": (COMPLETE, {"prompt": "a", "frobnicate": True}, 400, "frobnicate"),
    "wrong type": (COMPLETE, {"prompt": "a", "max_tokens": "many"}, 400, "max_tokens"),
    "missing prompt": (COMPLETE, {"max_tokens": 3}, 400, "prompt"),
    "temperature out of range": (COMPLETE, {"prompt": "a", "temperature": 7}, 400, "temperature"),
    "max_tokens over the limit": (COMPLETE, {"prompt": "a", "max_tokens": 101}, 400, "serve.max_tokens"),
    "prompt too long": (COMPLETE, {"prompt": list(range(10, 140)), "max_tokens": 1}, 400, "serve.max_cache_len"),
    "prompt + max_tokens too long": (COMPLETE, {"prompt": list(range(10, 100)), "max_tokens": 60}, 400,
                                     "serve.max_cache_len"),
    "token id out of range": (COMPLETE, {"prompt": [5, 99999]}, 400, "token ids"),
    "unknown model": (COMPLETE, {"model": "gpt-9", "prompt": "a"}, 404, "gpt-9"),
    "empty messages": (CHAT, {"messages": []}, 400, "messages"),
    "unknown role": (CHAT, {"messages": [{"role": "robot", "content": "hi"}]}, 400, "role"),
    "unknown content part": (CHAT, {"messages": [{"role": "user", "content": [{"type": "video", "url": "x"}]}]},
                             400, None),
    "bad base64 image": (CHAT, image_message("data:image/png;base64,@@@not-base64@@@"), 400, "base64"),
    "undecodable image": (CHAT, image_message(data_url(b"this is not a png at all")), 400, "not a decodable image"),
    "unsupported image type": (CHAT, image_message(data_url(b"GIF89a", "image/gif")), 400, "image/gif"),
    "remote image not allowed": (CHAT, image_message("https://example.com/cat.png"), 400, "allow-image-host"),
    "file URL": (CHAT, image_message("file:///etc/passwd"), 400, "data: URL"),
    "bad base64 audio": (CHAT, audio_message("%%%"), 400, "base64"),
    "undecodable audio": (CHAT, audio_message(base64.b64encode(b"RIFF....nope").decode()), 400, "input_audio"),
    "unsupported audio format": (CHAT, audio_message(base64.b64encode(wav_bytes()).decode(), "mp3"), 400, "mp3"),
    "two output modalities": (CHAT, {"messages": [{"role": "user", "content": "x"}], "modalities": ["text", "image"]},
                              400, "modalities"),
    "unknown route": ("/v1/embeddings", {"input": "x"}, 404, None),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_gets_a_4xx_openai_error_and_the_server_stays_healthy(live, case):
    path, body, status, mention = BAD[case]
    got, _, reply = live.post(path, body)
    assert got == status, reply
    error = reply["error"]
    assert set(error) == {"message", "type", "param", "code"}
    if mention is not None:
        assert mention in error["message"] + str(error["param"]), error
    live.wait_idle()
    assert live.post(COMPLETE, {"prompt": "a", "max_tokens": 2})[0] == 200


def test_an_oversized_body_is_refused_with_413_even_when_sent_in_chunks(live):
    huge = json.dumps({"prompt": "a" * (SERVE_CFG.serve.max_body_bytes + 10)}).encode()
    status, _, reply = live.post(COMPLETE, huge)
    assert status == 413 and "serve.max_body_bytes" in reply["error"]["message"]
    conn = http.client.HTTPConnection("127.0.0.1", live.port, timeout=60)
    pieces = (huge[i: i + 2**20] for i in range(0, len(huge), 2**20))  # no Content-Length: chunked
    conn.request("POST", COMPLETE, body=pieces, headers={"Content-Type": "application/json"}, encode_chunked=True)
    response = conn.getresponse()
    assert response.status == 413 and b"serve.max_body_bytes" in response.read()
    conn.close()
    live.healthy()


def test_a_full_queue_answers_429_with_retry_after(live):
    live.server.scheduler.max_queue = 0
    try:
        status, headers, reply = live.post(COMPLETE, {"prompt": "a", "max_tokens": 2})
    finally:
        live.server.scheduler.max_queue = SERVE_CFG.serve.max_queue
    assert status == 429 and headers["Retry-After"] == "1" and reply["error"]["code"] == "queue_full"
    assert live.post(COMPLETE, {"prompt": "a", "max_tokens": 2})[0] == 200


def test_the_api_key_guards_every_route_but_health(live):
    live.server.api_key = "sesame"
    try:
        assert live.call("GET", "/health")[0] == 200
        assert live.call("GET", "/v1/models")[0] == 401
        assert live.post(COMPLETE, {"prompt": "a"}, headers={"Authorization": "Bearer wrong"})[0] == 401
        assert live.post(COMPLETE, {"prompt": "a", "max_tokens": 2}, headers={"Authorization": "Bearer sesame"})[0] == 200
    finally:
        live.server.api_key = None


@pytest.mark.parametrize("stream", [False, True])
def test_a_request_over_its_time_limit_gets_a_timeout_error_and_frees_its_slot(live, stream, monkeypatch):
    step = live.server.engine.step
    monkeypatch.setattr(live.server.engine, "step", lambda live_slots: (time.sleep(0.01), step(live_slots))[1])
    live.server.cfg = replace_serve(SERVE_CFG, request_timeout_s=0.2)  # 100 tokens take over 1 s
    try:
        status, _, reply = live.post(COMPLETE, {"prompt": "a", "max_tokens": 100, "temperature": 0, "stream": stream})
    finally:
        live.server.cfg = SERVE_CFG
    if stream:  # the status line went out with the first chunk: the error is the stream's last event
        assert status == 200
        last = json.loads([line for line in reply.split("\n\n") if line.startswith("data: {")][-1][len("data: "):])
        assert last["error"]["code"] == "timeout"
    else:
        assert status == 504 and reply["error"]["code"] == "timeout"
    live.wait_idle()


@pytest.mark.parametrize("stream", [False, True])
def test_a_client_that_disconnects_cancels_its_request_and_frees_its_slot(live, stream, monkeypatch):
    submitted = []
    submit = live.server.scheduler.submit

    def text_only(request):  # no <eos> possible: nothing but the disconnect can end it before its 100 tokens
        request.params = dataclasses.replace(request.params, allowed=(10, 1024))
        submitted.append(request)
        submit(request)

    monkeypatch.setattr(live.server.scheduler, "submit", text_only)
    conn = http.client.HTTPConnection("127.0.0.1", live.port, timeout=30)
    body = {"prompt": "a", "max_tokens": 100, "temperature": 1.0, "stream": stream}
    conn.request("POST", COMPLETE, body=json.dumps(body), headers={"Content-Type": "application/json"})
    deadline = time.time() + 10
    while not live.healthy()["slots_in_use"] and time.time() < deadline:
        time.sleep(0.005)
    assert live.healthy()["slots_in_use"] == 1
    conn.sock.shutdown(socket.SHUT_RDWR)
    conn.close()
    live.wait_idle()
    assert submitted[0].finished and submitted[0].cancel_reason == "cancelled"


@pytest.mark.slow  # HTTP load
def test_200_requests_at_concurrency_32_all_complete_and_none_is_lost(live):
    def one(i: int):
        body = {"prompt": f"a small {i}", "max_tokens": 1 + i % 8, "temperature": float(i % 2), "seed": i,
                "stream": i % 3 == 0}
        if body["stream"]:
            chunks = live.events(COMPLETE, body)
            return chunks[-1]["choices"][0]["finish_reason"]
        status, _, reply = live.post(COMPLETE, body)
        assert status == 200, reply
        return reply["choices"][0]["finish_reason"]

    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        reasons = list(pool.map(one, range(200)))
    assert len(reasons) == 200 and set(reasons) <= {"stop", "length"}
    live.wait_idle()


@pytest.mark.slow  # starts serve.py
def test_serve_py_with_random_weights_starts_answers_and_stops(tmp_path):
    """The command line as a user runs it: `python serve.py --config tiny --random-init` (made small)."""
    root = Path(__file__).parent.parent
    port = free_port()
    command = [sys.executable, str(root / "serve.py"), "--config", "tiny", "--random-init", "--workdir",
               str(tmp_path / "none"), "--model.num-layers", "1", "--serve.slots", "2", "--serve.max-cache-len", "32",
               "--serve.port", str(port)]
    server = subprocess.Popen(command, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env={**os.environ, "PYTHONPATH": str(root)})
    try:
        live = Live(None, port)
        deadline = time.time() + 180
        while time.time() < deadline and server.poll() is None:
            with contextlib.suppress(OSError):
                if live.call("GET", "/health")[0] == 200:
                    break
            time.sleep(0.5)
        status, _, body = live.post(COMPLETE, {"prompt": "a small", "max_tokens": 4})
        assert status == 200 and body["model"] == "tiny" and body["usage"]["completion_tokens"] >= 1
        too_long = live.post(COMPLETE, {"prompt": list(range(10, 50)), "max_tokens": 1})
        assert too_long[0] == 400 and "serve.max_cache_len=32" in too_long[2]["error"]["message"]
    finally:
        server.send_signal(signal.SIGINT)
        output = server.communicate(timeout=60)[0]
    assert "serving tiny with random weights" in output, output[-2000:]
