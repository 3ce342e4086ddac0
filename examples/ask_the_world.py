"""Ask a running server the world's three tasks over HTTP, as any OpenAI-style client would.

    python serve.py --workdir runs/tiny &          # after `python train.py --config tiny`
    python examples/ask_the_world.py [--url http://127.0.0.1:8000] [--pictures 10]

Renders fresh validation pictures, a DTMF clip and video clips with the world's own code
(data/world.py), sends them as chat content parts (a PNG data URL, a base64 WAV, a GIF data URL),
and checks the replies: captions by exact match, the transcript and the clips' captions likewise,
and a requested drawing (`modalities: ["image"]`) by the world's colour-and-quadrant detector.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import urllib.request
import wave

import numpy as np
from PIL import Image

from data import world
from data.media import encode_gif


def chat(url: str, content, **fields) -> dict:
    body = {"messages": [{"role": "user", "content": content}], **fields}
    request = urllib.request.Request(f"{url}/v1/chat/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    return json.loads(urllib.request.urlopen(request, timeout=120).read())["choices"][0]["message"]


def png_url(pixels: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def wav_base64(samples: np.ndarray) -> str:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(world.SAMPLE_RATE)
        w.writeframes((np.clip(samples, -1, 1) * 32767).astype(np.int16).tobytes())
    return base64.b64encode(buffer.getvalue()).decode()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--pictures", type=int, default=10)
    parser.add_argument("--videos", type=int, default=10)
    parser.add_argument("--seed", type=int, default=12345)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)

    captions = []
    for _ in range(args.pictures):
        attributes = world.sample_attributes(rng, "validation")
        pixels = world.render_image(rng, *attributes)
        reply = chat(args.url, [{"type": "text", "text": "Describe the picture:"},
                                {"type": "image_url", "image_url": {"url": png_url(pixels)}}],
                     temperature=0, max_tokens=20)
        captions.append({"said": reply["content"].strip(), "truth": world.caption(*attributes)})

    videos = []
    for _ in range(args.videos):
        frames, words = world.sample_clip(rng, "validation")
        gif = "data:image/gif;base64," + base64.b64encode(encode_gif(frames, world.CLIP_FPS)).decode()
        reply = chat(args.url, [{"type": "text", "text": "Describe the clip:"},
                                {"type": "video_url", "video_url": {"url": gif}}], temperature=0, max_tokens=24)
        videos.append({"said": reply["content"].strip(), "truth": words})

    symbols = world.sample_symbols(rng)
    reply = chat(args.url, [{"type": "text", "text": "Transcribe the tones:"},
                            {"type": "input_audio", "input_audio": {"data": wav_base64(world.render_dtmf(rng, symbols)),
                                                                    "format": "wav"}}],
                 temperature=0, max_tokens=20)
    transcript = {"said": reply["content"].strip(), "truth": world.transcript(symbols)}

    attributes = world.sample_attributes(rng, "validation")
    reply = chat(args.url, f"Draw: {world.caption(*attributes)}", modalities=["image"], temperature=1.0, top_k=10,
                 seed=args.seed)
    url = reply["images"][0]["image_url"]["url"]
    drawn = np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB"))
    drawing = {"asked": world.caption(*attributes), "seen": list(world.detect_picture(drawn))}

    print(json.dumps({
        "captions_right": sum(c["said"] == c["truth"] for c in captions), "pictures": len(captions),
        "captions": captions[:3],
        "video_captions_right": sum(v["said"] == v["truth"] for v in videos), "videos": len(videos),
        "video_captions": videos[:3], "transcript": transcript, "transcript_right": transcript["said"] == transcript["truth"],
        "drawing": drawing, "drawing_right": drawing["seen"] == [attributes[1], attributes[3]],
    }, indent=1))


if __name__ == "__main__":
    main()
