"""Ask a server running the real-data run to caption held-out digits and transcribe held-out speech.

    python serve.py --workdir runs/real &
    python examples/real_data/ask.py [--url http://127.0.0.1:8000] [--data runs/real_data] [--count 20]

Sends held-out scans as PNG data URLs and held-out clips as base64 WAV, each after the prompt its
training template used (data/templates.py), through the OpenAI-style chat API, as any client
would; prints one JSON object: how many answers were exactly right, and the first few exchanges.
"""

from __future__ import annotations

import argparse
import base64
import json
import urllib.request
from pathlib import Path

from data.templates import CAPTION_PROMPT, TRANSCRIBE_PROMPT


def chat(url: str, content: list) -> str:
    body = {"messages": [{"role": "user", "content": content}], "max_tokens": 16, "temperature": 0}
    request = urllib.request.Request(f"{url}/v1/chat/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    return json.loads(urllib.request.urlopen(request, timeout=120).read())["choices"][0]["message"]["content"]


def held_out(manifest: Path, count: int) -> list[dict]:
    lines = [json.loads(line) for line in manifest.read_text().splitlines()]
    return [line for line in lines if line.get("split") == "validation"][:count]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--data", type=Path, default=Path("runs/real_data"))
    parser.add_argument("--count", type=int, default=20)
    args = parser.parse_args()
    exchanges = {"digits": [], "speech": []}
    for line in held_out(args.data / "digits.jsonl", args.count):
        png = base64.b64encode((args.data / line["image"]).read_bytes()).decode()
        answer = chat(args.url, [{"type": "text", "text": CAPTION_PROMPT},
                                 {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{png}"}}])
        exchanges["digits"].append({"file": line["image"], "expected": line["caption"], "answer": answer})
    for line in held_out(args.data / "speech.jsonl", args.count):
        wav = base64.b64encode((args.data / line["audio"]).read_bytes()).decode()
        answer = chat(args.url, [{"type": "text", "text": TRANSCRIBE_PROMPT},
                                 {"type": "input_audio", "input_audio": {"data": wav, "format": "wav"}}])
        exchanges["speech"].append({"file": line["audio"], "expected": line["transcript"], "answer": answer})
    print(json.dumps({
        **{f"{name}_right": f"{sum(e['answer'] == e['expected'] for e in found)}/{len(found)}"
           for name, found in exchanges.items()},
        "examples": {name: found[:3] for name, found in exchanges.items()},
    }, indent=1))


if __name__ == "__main__":
    main()
