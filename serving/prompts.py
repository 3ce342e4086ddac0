"""Request bodies -> token ids and sampling parameters for the engine.

A chat's messages become one segment list, in order: text as Text, `image_url` parts as Image
(the image tokenizer's codes between <boi> <eoi>), `input_audio` parts as Audio (<boa> ... <eoa>).
Roles add no tokens: the model was trained on the world's tasks (a prompt, a picture -> its
caption), not on chat turns, so "Describe the picture:" and a picture ask it for a caption.

`modalities: ["image"]` asks for a picture: the prompt ends in <boi>, and the engine may then
produce exactly one image's worth of image codes and nothing else.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from data.segments import Audio, Image, Text
from serving.engine import SamplingParams
from serving.media import BadInput, audio_waveform, check_image, image_bytes
from serving.schemas import ChatRequest, CompletionRequest, Sampling


@dataclasses.dataclass(frozen=True)
class Prompt:
    ids: np.ndarray  # int32, <bos> first
    params: SamplingParams
    kind: str = "text"  # what the reply is: "text", or "image" (a PNG built from the codes)


def sampling_params(body: Sampling) -> SamplingParams:
    """The engine's parameters (max_tokens and the seed are set per choice later)."""
    return SamplingParams(temperature=body.temperature, top_k=body.top_k, top_p=body.top_p,
                          logprobs=body.reports_logprobs())


def completion_prompts(server, body: CompletionRequest) -> list[Prompt]:
    """A string, a list of strings, a token list or a list of token lists: one prompt each."""
    bos = server.vocab.ids["<bos>"]
    prompt = body.prompt
    if isinstance(prompt, str) or (prompt and isinstance(prompt[0], str)):
        texts = [prompt] if isinstance(prompt, str) else prompt
        id_lists = [server.vocab.encode([Text(t)], bos=True, eos=False).ids for t in texts]
    else:
        lists = [prompt] if not prompt or isinstance(prompt[0], int) else prompt
        id_lists = []
        for i, ids in enumerate(lists):
            ids = np.asarray(ids, np.int64)
            if ids.size and (ids.min() < 0 or ids.max() >= server.real_vocab):
                raise BadInput(f"prompt[{i}]: token ids must lie in [0, {server.real_vocab})", "prompt")
            id_lists.append(np.concatenate([[bos], ids]).astype(np.int32))
    if not id_lists:
        raise BadInput("prompt: needs at least one prompt", "prompt")
    return [Prompt(ids, sampling_params(body)) for ids in id_lists]


def chat_prompt(server, body: ChatRequest) -> Prompt:
    """The conversation as one prompt (runs the image and audio tokenizers: call it off the event loop)."""
    if set(body.modalities) == {"text", "image"}:
        raise BadInput("modalities: ask for one output modality per request, ['text'] or ['image']", "modalities")
    segments = []
    for m, message in enumerate(body.messages):
        parts = [message.content] if isinstance(message.content, str) else (message.content or [])
        for p, part in enumerate(parts):
            where = f"messages[{m}].content[{p}]"
            if isinstance(part, str):
                segments.append(Text(part))
            elif part.type == "text":
                segments.append(Text(part.text))
            elif part.type == "image_url":
                data = image_bytes(part.image_url.url, f"{where}.image_url.url", server.allowed_image_hosts,
                                   server.max_body_bytes)
                segments.append(Image(codes=_image_codes(server, data, f"{where}.image_url")))
            else:
                audio = server.cfg.tokenizers.audio
                wave = audio_waveform(part.input_audio.data, part.input_audio.format, f"{where}.input_audio",
                                      audio.sample_rate, audio.max_seconds)
                segments.append(Audio(codes=server.vocab.audio.encode(wave)))
    ids = server.vocab.encode(segments, bos=True, eos=False).ids
    params = sampling_params(body)
    if body.modalities == ["image"]:
        vocab = server.vocab
        ids = np.append(ids, vocab.ids["<boi>"]).astype(np.int32)
        params = dataclasses.replace(params, max_tokens=vocab.image.length,
                                     allowed=(vocab.image_offset, vocab.image_offset + vocab.image_codes))
        return Prompt(ids, params, kind="image")
    return Prompt(ids, params)


def _image_codes(server, data: bytes, where: str) -> np.ndarray:
    check_image(data, where)
    try:
        return server.vocab.image.encode(data)
    except ValueError as error:
        raise BadInput(f"{where}: {error}", where) from None
