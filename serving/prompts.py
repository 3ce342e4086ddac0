"""Request bodies -> token ids and sampling parameters for the engine.

A chat's parts become segments, in order: text as Text, `image_url` parts as Image (the image
tokenizer's codes between <boi> <eoi>), `input_audio` parts as Audio (<boa> ... <eoa>), `video_url`
parts (a GIF, MP4 or WebM data URL) as Video (its frames at `tokenizers.video.fps`, each an image
run, between <bov> <eov>). For an
instruction-tuned model (the run has an SFT checkpoint) the messages become the conversation
template's turns (data/conversation.py: system, user and model turns, the assistant's messages as
history), the prompt opens the model's turn, and the reply stops at <end_of_turn>. A pre-trained
model never saw a turn: its roles add no tokens, and "Describe the picture:" and a picture ask it
for a caption, as its tasks did.

`modalities: ["image"]` asks for a picture: the prompt ends in <boi>, and the engine may then
produce exactly one image's worth of image codes and nothing else.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from data import conversation
from data.segments import Audio, Image, Segment, Text, Video
from serving.engine import SamplingParams
from serving.media import BadInput, audio_waveform, check_image, image_bytes, video_bytes, video_frames
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
    """A string, a list of strings, a token list or a list of token lists: one prompt each.
    Tokenizes: call it off the event loop."""
    bos, limits = server.vocab.ids["<bos>"], server.cfg.serve
    prompt = body.prompt
    if isinstance(prompt, str) or (prompt and isinstance(prompt[0], str)):
        texts = [prompt] if isinstance(prompt, str) else prompt
        _check_count(len(texts), body.n, server)
        _check_chars(sum(map(len, texts)), "prompt", limits.max_prompt_chars)
        id_lists = [server.vocab.encode([Text(t)], bos=True, eos=False).ids for t in texts]
    else:
        lists = [prompt] if not prompt or isinstance(prompt[0], int) else prompt
        _check_count(len(lists), body.n, server)
        id_lists = []
        for i, ids in enumerate(lists):
            # Checked as Python ints: a JSON number can be any size, and numpy refuses past 2**63.
            if any(not 0 <= t < server.real_vocab for t in ids):
                raise BadInput(f"prompt[{i}]: token ids must lie in [0, {server.real_vocab})", "prompt")
            id_lists.append(np.array([bos, *ids], np.int32))
    if not id_lists:
        raise BadInput("prompt: needs at least one prompt", "prompt")
    return [Prompt(ids, sampling_params(body)) for ids in id_lists]


def chat_prompt(server, body: ChatRequest) -> Prompt:
    """The conversation as one prompt (runs the image and audio tokenizers: call it off the event loop)."""
    if set(body.modalities) == {"text", "image"}:
        raise BadInput("modalities: ask for one output modality per request, ['text'] or ['image']", "modalities")
    _check_count(1, body.n, server)
    parts = [(message.role, f"messages[{m}].content" + ("" if isinstance(message.content, str) else f"[{p}]"), part)
             for m, message in enumerate(body.messages)
             for p, part in enumerate([message.content] if isinstance(message.content, str) else message.content or [])]
    _check_fits(server, [(where, part) for _, where, part in parts])
    segments = [(role, _segment(server, where, part)) for role, where, part in parts]
    params = sampling_params(body)
    if server.chat_template:  # an instruction-tuned model: the template's turns; the reply ends its turn
        segments = conversation.segments(conversation.by_role(segments), reply=True)
        params = dataclasses.replace(params, stop_ids=(server.vocab.ids[conversation.END_OF_TURN],))
    else:
        segments = [segment for _, segment in segments]
    ids = server.vocab.encode(segments, bos=True, eos=False).ids
    if body.modalities == ["image"]:
        vocab = server.vocab
        ids = np.append(ids, vocab.ids["<boi>"]).astype(np.int32)
        params = dataclasses.replace(params, max_tokens=vocab.image.length,
                                     allowed=(vocab.image_offset, vocab.image_offset + vocab.image_codes))
        return Prompt(ids, params, kind="image")
    return Prompt(ids, params)


def _segment(server, where: str, part) -> Segment:
    """A content part as a segment: text, or a picture's or a clip's codes (decoded and tokenized)."""
    if isinstance(part, str):
        return Text(part)
    if part.type == "text":
        return Text(part.text)
    if part.type == "image_url":
        data = image_bytes(part.image_url.url, f"{where}.image_url.url", server.fetch_policy, server.max_body_bytes)
        return Image(codes=_image_codes(server, data, f"{where}.image_url"))
    if part.type == "video_url":
        limits, tokenizers = server.cfg.serve, server.cfg.tokenizers
        data, container = video_bytes(part.video_url.url, f"{where}.video_url.url", limits.max_video_bytes)
        frames = video_frames(data, container, f"{where}.video_url", tokenizers.image.image_size, tokenizers.video.fps,
                              tokenizers.video.max_frames, limits.max_video_seconds, limits.max_video_frames)
        return Video(codes=np.stack(server.vocab.image.encode_batch(list(frames))))
    audio = server.cfg.tokenizers.audio
    wave = audio_waveform(part.input_audio.data, part.input_audio.format, f"{where}.input_audio",
                          audio.sample_rate, audio.max_seconds, server.cfg.serve.max_audio_sample_rate)
    return Audio(codes=server.vocab.audio.encode(wave))


def _check_count(prompts: int, n: int, server) -> None:
    """Refuse a request that could never be queued, before any work: 400s naming the limit."""
    limits = server.cfg.serve
    if prompts > limits.max_prompts:
        raise BadInput(f"prompt: {prompts} prompts is over the limit of {limits.max_prompts} per request "
                       "(serve.max_prompts)", "prompt", "too_many_prompts")
    if prompts * n > limits.max_queue:
        raise BadInput(f"n: {prompts} prompt(s) x n={n} is {prompts * n} generations, more than the server ever "
                       f"queues (serve.max_queue={limits.max_queue})", "n", "too_many_choices")


def _check_chars(chars: int, param: str, limit: int) -> None:
    if chars > limit:
        raise BadInput(f"{param}: {chars} characters of text is over the limit of {limit} per request "
                       "(serve.max_prompt_chars)", param, "prompt_too_long")


def _check_fits(server, parts: list) -> None:
    """Refuse what cannot fit the context before decoding any media: a picture is always the same
    number of tokens, a clip at least one code between its two symbols."""
    texts = [part if isinstance(part, str) else part.text for _, part in parts
             if isinstance(part, str) or part.type == "text"]
    _check_chars(sum(map(len, texts)), "messages", server.cfg.serve.max_prompt_chars)
    images = sum(not isinstance(part, str) and part.type == "image_url" for _, part in parts)
    clips = sum(not isinstance(part, str) and part.type == "input_audio" for _, part in parts)
    videos = sum(not isinstance(part, str) and part.type == "video_url" for _, part in parts)
    # <bos>, then each picture, clip, and video (one frame at least)
    least = 1 + images * (server.vocab.image.length + 2) + clips * 3 + videos * (server.vocab.image.length + 4)
    cache_len = server.cfg.serve.max_cache_len
    if least >= cache_len:
        raise BadInput(f"messages: {images} picture(s), {clips} clip(s) and {videos} video(s) take at least {least} "
                       f"tokens; the limit "
                       f"is {cache_len - 1} (serve.max_cache_len={cache_len}, less one token to generate)",
                       "messages", "context_length_exceeded")


def _image_codes(server, data: bytes, where: str) -> np.ndarray:
    check_image(data, where)
    try:
        return server.vocab.image.encode(data)
    except ValueError as error:
        raise BadInput(f"{where}: {error}", where) from None
