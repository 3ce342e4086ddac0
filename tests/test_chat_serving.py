"""Chat over HTTP: an instruction-tuned run renders the request through the conversation template,
into exactly the ids training used; a pre-trained one gets the parts in order; /v1/models says which."""

import json

import numpy as np
import pytest

from data import conversation
from data.mixture import open_mixture
from data.prepare import prepare
from data.segments import Image, Text
from tests.serving_helpers import data_url, png_bytes
from tests.test_manifest import manifest_config

CHAT = "/v1/chat/completions"


@pytest.fixture
def tuned(live, monkeypatch):
    """The live server as if it served an SFT checkpoint; the prompts the engine receives."""
    monkeypatch.setattr(live.server, "tuned", ("sft", 7))
    seen = []
    submit = live.server.scheduler.submit
    monkeypatch.setattr(live.server.scheduler, "submit", lambda request: (seen.append(request), submit(request)))
    return seen


def test_a_multi_turn_request_with_history_and_a_system_message_is_exactly_the_templates_ids(live, vocab, tuned):
    picture = png_bytes((40, 70, 220))
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Describe:"},
                                     {"type": "image_url", "image_url": {"url": data_url(picture)}}]},
        {"role": "assistant", "content": "a blue circle"},
        {"role": "user", "content": "Colour?"},
    ]
    status, _, reply = live.post(CHAT, {"messages": messages, "max_tokens": 3, "temperature": 0})
    assert status == 200, reply
    turns = [conversation.turn("system", [Text("Be brief.")]),
             conversation.turn("user", [Text("Describe:"), Image(codes=vocab.image.encode(picture))]),
             conversation.turn("assistant", [Text("a blue circle")]),
             conversation.turn("user", [Text("Colour?")])]
    expected = vocab.encode(conversation.segments(turns, reply=True), bos=True, eos=False).ids
    np.testing.assert_array_equal(tuned[0].prompt, expected)
    assert tuned[0].params.stop_ids == (vocab.ids[conversation.END_OF_TURN],)  # the reply ends with its turn


def test_an_image_reply_is_a_model_turn_of_image_codes(live, vocab, tuned):
    status, _, reply = live.post(CHAT, {"messages": [{"role": "user", "content": "Draw: a small red circle"}],
                                        "modalities": ["image"]})
    assert status == 200, reply
    prompt = tuned[0].prompt.tolist()
    head = vocab.encode(conversation.segments([conversation.turn("user", [Text("Draw: a small red circle")])],
                                              reply=True), bos=True, eos=False).ids.tolist()
    assert prompt == [*head, vocab.ids["<boi>"]]
    assert reply["choices"][0]["message"]["images"][0]["image_url"]["url"].startswith("data:image/png;base64,")


def test_models_says_whether_the_model_is_instruction_tuned(live, monkeypatch):
    assert live.call("GET", "/v1/models")[2]["data"][0]["stage"] == "random"
    monkeypatch.setattr(live.server, "tuned", ("lm", 3000))
    card = live.call("GET", "/v1/models")[2]["data"][0]
    assert card["stage"] == "pretrained" and card["step"] == 3000 and "no SFT checkpoint" in card["note"]
    monkeypatch.setattr(live.server, "tuned", ("sft", 120))
    assert live.call("GET", "/v1/models")[2]["data"][0]["stage"] == "sft"


def test_a_pre_trained_model_gets_the_parts_in_order_without_turns(live, vocab, monkeypatch):
    seen = []
    submit = live.server.scheduler.submit
    monkeypatch.setattr(live.server.scheduler, "submit", lambda request: (seen.append(request), submit(request)))
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "a small"}]
    assert live.post(CHAT, {"messages": messages, "max_tokens": 2})[0] == 200
    expected = vocab.encode([Text("Be brief."), Text("a small")], bos=True, eos=False).ids
    np.testing.assert_array_equal(seen[0].prompt, expected)


def test_a_conversation_trains_and_serves_as_the_same_ids(live, vocab, tuned, tmp_path):
    """A manifest's conversation, prepared and read as training reads it, and the same messages sent
    to the server without the last reply: the served prompt is the training ids up to that reply."""
    picture = png_bytes((220, 40, 40))
    (tmp_path / "red.png").write_bytes(picture)
    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "Describe:"},
                                             {"type": "image_url", "image_url": {"url": "red.png"}}]},
                {"role": "assistant", "content": "a red square"},
                {"role": "user", "content": "Colour?"},
                {"role": "assistant", "content": "red"}]
    manifest = tmp_path / "chats.jsonl"
    manifest.write_text(json.dumps({"messages": messages, "split": "train"}) + "\n")
    prepare(manifest, tmp_path / "prepared", workers=1, log=lambda m: None)
    train = open_mixture(manifest_config(f"manifest:{tmp_path / 'prepared'}"), tmp_path / "run", "train")
    (stream,) = train.sources
    kind, segments = train.readers[stream](train.sources[stream][0])
    trained = vocab.encode(segments, bos=True, eos=False)

    messages[1]["content"][1]["image_url"]["url"] = data_url(picture)
    status, _, reply = live.post(CHAT, {"messages": messages[:-1], "max_tokens": 2})
    assert status == 200 and kind == "conversation", reply
    served = tuned[0].prompt.tolist()
    assert trained.ids[: len(served)].tolist() == served
    assert trained.ids[len(served):].tolist() == [*vocab.text.encode("red"), vocab.ids[conversation.END_OF_TURN]]
    assert trained.loss_mask[len(served):].all()  # the last reply trains; so did the first, in the history
    assert trained.loss_mask[: len(served)].sum() == len(vocab.text.encode("a red square")) + 1


def test_a_conversation_longer_than_the_context_is_refused_naming_the_limit(live, tuned):
    turns = [{"role": role, "content": "the small red circle in the top left " * 3}
             for _ in range(6) for role in ("user", "assistant")]
    status, _, reply = live.post(CHAT, {"messages": [*turns, {"role": "user", "content": "and?"}], "max_tokens": 2})
    assert status == 400 and reply["error"]["code"] == "context_length_exceeded", reply
    assert "serve.max_cache_len" in reply["error"]["message"] and not tuned  # nothing reached the engine
