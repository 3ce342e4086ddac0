"""Hold the world's held-out conversations with a served, instruction-tuned run, through the `openai` client.

    python train.py --config tiny                          # the LM, then SFT (<workdir>/sft/)
    python serve.py --workdir runs/tiny &                 # serves the SFT checkpoint
    python examples/chat_the_world.py [--base-url http://127.0.0.1:8000/v1] [--conversations 200]

Takes the first `--conversations` held-out conversations the SFT evaluation scores
(data/world_chat.py, split "validation") and holds each with the server turn by turn, as a chat
client does: the pictures as PNG data URLs, the sound clips as base64 WAV, the video clips as GIF
data URLs (`video_url` parts), the system message when there is one. Each turn's request carries the conversation so far, with the earlier model turns as
they were meant to go (as the evaluation asks them), so the server's greedy text answers are the
evaluation's answers. Text turns are compared with the references (exact match). A drawing turn
is asked with `modalities: ["image"]` (the reply is held to one picture's codes, where the
evaluation lets the model open the picture itself, and its seed is another) and its picture
checked by the world's detector: the same test, not the same samples. Prints one
JSON object: per kind of turn, how many were right, and the first conversation in full.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import wave

import numpy as np
from openai import OpenAI
from PIL import Image as PILImage

from data import world
from data.conversation import Turn
from data.media import encode_gif
from data.segments import Audio, Image, Text, Video
from data.world_chat import make_conversation

ROLES = {"system": "system", "user": "user", "model": "assistant"}


def content(turn: Turn) -> str | list[dict]:
    """A turn's parts as OpenAI content: a plain string for one text part, else a list of parts."""
    if len(turn.parts) == 1 and isinstance(turn.parts[0], Text):
        return turn.parts[0].text
    parts = []
    for part in turn.parts:
        if isinstance(part, Text):
            parts.append({"type": "text", "text": part.text})
        elif isinstance(part, Image):
            buffer = io.BytesIO()
            PILImage.fromarray(part.pixels).save(buffer, format="PNG")
            url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
            parts.append({"type": "image_url", "image_url": {"url": url}})
        elif isinstance(part, Audio):
            buffer = io.BytesIO()
            with wave.open(buffer, "wb") as w:
                w.setnchannels(1), w.setsampwidth(2), w.setframerate(world.SAMPLE_RATE)
                w.writeframes((np.clip(part.waveform, -1, 1) * 32767).astype(np.int16).tobytes())
            parts.append({"type": "input_audio",
                          "input_audio": {"data": base64.b64encode(buffer.getvalue()).decode(), "format": "wav"}})
        elif isinstance(part, Video):  # the clip's frames, at the rate the world renders them
            url = "data:image/gif;base64," + base64.b64encode(encode_gif(part.frames, world.CLIP_FPS)).decode()
            parts.append({"type": "video_url", "video_url": {"url": url}})
    return parts


def history(turns: list[Turn]) -> list[dict]:
    """The turns as OpenAI messages (a model turn that drew a picture is an assistant message with it)."""
    return [{"role": ROLES[turn.role], "content": content(turn)} for turn in turns]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-url", default="http://127.0.0.1:8000/v1")
    parser.add_argument("--conversations", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0, help="the world's seed (data.seed)")
    args = parser.parse_args()
    client = OpenAI(base_url=args.base_url, api_key="unused")
    model = client.models.list().data[0]
    tally: dict[str, list[int]] = {}
    first = []
    for index in range(args.conversations):
        turns, answers = make_conversation(args.seed, "validation", index)
        for answer in answers:
            messages = history(turns[: answer.turn])
            if answer.kind == "drawing":
                reply = client.chat.completions.create(model=model.id, messages=messages, modalities=["image"],
                                                       temperature=1.0, extra_body={"top_k": 10}, seed=answer.turn)
                url = reply.choices[0].message.model_extra["images"][0]["image_url"]["url"]
                pixels = np.asarray(PILImage.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB"))
                said, right = list(world.detect_picture(pixels)), world.detect_picture(pixels) == answer.drawn
            else:
                reply = client.chat.completions.create(model=model.id, messages=messages, temperature=0, max_tokens=32)
                said = reply.choices[0].message.content
                right = said == answer.text
            tally.setdefault(answer.kind, []).append(int(right))
            if index == 0:
                first.append({"turn": answer.turn, "asked": messages[-1]["content"] if isinstance(
                    messages[-1]["content"], str) else "(parts)", "said": said,
                    "expected": answer.text or list(answer.drawn)})
    print(json.dumps({"model": model.id, "stage": (model.model_extra or {}).get("stage"),
                      "conversations": args.conversations,
                      "right": {kind: f"{sum(v)}/{len(v)}" for kind, v in tally.items()},
                      "accuracy": {kind: round(sum(v) / len(v), 4) for kind, v in tally.items()},
                      "first_conversation": first}, indent=1))


if __name__ == "__main__":
    main()
