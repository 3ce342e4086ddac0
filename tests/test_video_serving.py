"""Video over HTTP: a `video_url` part (a GIF, MP4 or WebM data URL) reaches the model as its frames'
image runs between <bov> <eov>, its reply is the offline engine's, and a bad clip is a 400 naming
the part while everyone else is served."""

import dataclasses

import numpy as np
import pytest

from data.media import encode_gif, encode_video
from parallel.sharding import make_mesh
from serving.engine import Engine, SamplingParams
from serving.offline import generate
from tests.serving_helpers import SERVE_CFG, data_url, served_model
from tests.test_api_hardening import expect_400

CHAT = "/v1/chat/completions"


def clip(count: int = 4) -> np.ndarray:
    """A red square moving right across grey frames."""
    frames = np.full((count, 32, 32, 3), 200, np.uint8)
    for i in range(count):
        frames[i, 10:20, 6 * i : 6 * i + 10] = (220, 40, 40)
    return frames


@pytest.fixture
def video_server(live, monkeypatch):
    """The live server keeping 1 frame at 2 fps (a 4-frame clip would not fit its 128-token cache);
    the prompts the engine receives."""
    tokenizers = dataclasses.replace(SERVE_CFG.tokenizers, video=dataclasses.replace(SERVE_CFG.tokenizers.video,
                                                                                     max_frames=1))
    monkeypatch.setattr(live.server, "cfg", dataclasses.replace(live.server.cfg, tokenizers=tokenizers))
    seen = []
    submit = live.server.scheduler.submit
    monkeypatch.setattr(live.server.scheduler, "submit", lambda request: (seen.append(request), submit(request)))
    return seen


def video_message(url: str, text: str = "Describe the clip:") -> list[dict]:
    return [{"role": "user", "content": [{"type": "text", "text": text}, {"type": "video_url", "video_url": {"url": url}}]}]


@pytest.mark.parametrize("container", ["gif", "mp4", "webm"])
def test_a_video_part_reaches_the_model_as_its_frames_image_runs(live, vocab, video_server, container):
    frames = clip()
    data = encode_gif(frames, 2.0) if container == "gif" else encode_video(frames, 2.0, container)
    mime = "image/gif" if container == "gif" else f"video/{container}"
    status, _, reply = live.post(CHAT, {"messages": video_message(data_url(data, mime)), "max_tokens": 2})
    assert status == 200, reply
    ids = video_server[0].prompt.tolist()
    bov, eov = ids.index(vocab.ids["<bov>"]), ids.index(vocab.ids["<eov>"])
    frame = ids[bov + 1 : eov]
    assert frame[0] == vocab.ids["<boi>"] and frame[-1] == vocab.ids["<eoi>"] and len(frame) == 66  # 1 frame kept
    codes = np.array(frame[1:-1]) - vocab.image_offset
    if container == "gif":  # lossless: exactly the first frame's codes
        np.testing.assert_array_equal(codes, vocab.image.encode(frames[0]))
    else:  # a near-lossless codec: all but a few 4x4 blocks quantise alike
        assert (codes == vocab.image.encode(frames[0])).mean() > 0.9


def test_the_served_reply_to_a_video_prompt_is_the_offline_engines(live, vocab, video_server):
    """Greedy: what the server answers is what the engine alone generates from the same ids."""
    status, _, reply = live.post(CHAT, {"messages": video_message(data_url(encode_gif(clip(), 2.0), "image/gif")),
                                        "max_tokens": 8, "temperature": 0})
    assert status == 200, reply
    request = video_server[0]
    cfg = SERVE_CFG  # the engine as serve.py builds it (serving/server.py, make_server)
    engine = Engine(cfg.model, *served_model(), make_mesh(cfg.mesh), cfg.serve.slots, cfg.serve.max_cache_len,
                    eos_id=vocab.ids["<eos>"], real_vocab=vocab.real_size, is_token=vocab.is_token())
    offline = generate(engine, [request.prompt], SamplingParams(max_tokens=8, temperature=0.0))[0]
    served = [segment for segment in vocab.decode(offline) if hasattr(segment, "text")]
    assert reply["choices"][0]["message"]["content"] == "".join(s.text for s in served)
    assert reply["usage"]["completion_tokens"] == len(offline)


def test_bad_video_parts_are_400s_naming_the_part(live, video_server, monkeypatch):
    where = "messages[0].content[1].video_url"
    gif = encode_gif(clip(), 2.0)
    long_gif = encode_gif(clip(2), 1 / 20)  # 40 s
    cases = [
        (data_url(b"\x00\x00\x00\x18ftypmp42 broken", "video/mp4"), [where, "could not decode video bytes"]),
        (data_url(gif, "video/x-msvideo"), [where, "unsupported video type", "video/mp4"]),
        (data_url(gif, "video/mp4"), [where, "could not decode video bytes"]),  # read as its type says, nothing else
        ("https://example.com/clip.mp4", [where, "data URL", "remote videos are not fetched"]),
        (data_url(long_gif, "image/gif"), [where, "too long", "serve.max_video_seconds"]),
    ]
    for url, mentions in cases:
        error = expect_400(live, CHAT, {"messages": video_message(url)}, *mentions)
        assert error["param"].startswith(where)
    small = dataclasses.replace(live.server.cfg.serve, max_video_bytes=len(gif) - 1)
    monkeypatch.setattr(live.server, "cfg", dataclasses.replace(live.server.cfg, serve=small))
    expect_400(live, CHAT, {"messages": video_message(data_url(gif, "image/gif"))}, where, "serve.max_video_bytes")
