"""The OpenAI request bodies we accept, strictly: an unknown field or a wrong type is a 400.

Field names, defaults and ranges follow the OpenAI API (temperature defaults to 1, max_tokens to
16 for completions). Beyond it: `top_k` (0 = no limit), and on chat `modalities: ["image"]`, which
asks for a picture: the reply's message then carries it as a PNG data URL in `images`.
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

MAX_STOP_STRINGS = 4
MAX_CHOICES = 8


def _unicode(text: str) -> str:
    """JSON can carry a lone UTF-16 surrogate ("\\ud800"), which no tokenizer or UTF-8 reply can hold."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise ValueError(f"holds a lone surrogate {text[error.start]!r} at character {error.start}: send valid "
                         "Unicode (a surrogate only as half of a pair)") from None
    return text


Text = Annotated[str, AfterValidator(_unicode)]  # every string a request carries


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class StreamOptions(Strict):
    include_usage: bool = False


class Sampling(Strict):
    """What both endpoints share."""

    model: Text | None = None
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] = 1.0
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0
    top_k: Annotated[int, Field(ge=0)] = 0
    seed: int | None = None
    stop: Text | Annotated[list[Text], Field(max_length=MAX_STOP_STRINGS)] | None = None
    n: Annotated[int, Field(ge=1, le=MAX_CHOICES)] = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: Text | None = None  # accepted and ignored, as clients send it

    def stop_strings(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


class CompletionRequest(Sampling):
    prompt: Text | list[Text] | list[int] | list[list[int]]
    logprobs: Annotated[int, Field(ge=0, le=5)] | None = None

    def reports_logprobs(self) -> bool:
        return self.logprobs is not None  # logprobs=0 asks for the chosen tokens' own


class TextPart(Strict):
    type: Literal["text"]
    text: Text


class ImageURL(Strict):
    url: Text
    detail: Literal["auto", "low", "high"] = "auto"


class ImagePart(Strict):
    type: Literal["image_url"]
    image_url: ImageURL


class InputAudio(Strict):
    data: Text
    format: Text


class AudioPart(Strict):
    type: Literal["input_audio"]
    input_audio: InputAudio


class VideoURL(Strict):
    url: Text


class VideoPart(Strict):
    """vLLM's name for a clip: a data URL of a GIF, an MP4 or a WebM."""

    type: Literal["video_url"]
    video_url: VideoURL


ContentPart = Annotated[Union[TextPart, ImagePart, AudioPart, VideoPart], Field(discriminator="type")]


class Message(Strict):
    role: Literal["system", "user", "assistant", "developer"]
    content: Text | list[ContentPart] | None = None
    name: Text | None = None


class ChatRequest(Sampling):
    messages: Annotated[list[Message], Field(min_length=1)]
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    logprobs: bool = False
    top_logprobs: Annotated[int, Field(ge=0, le=5)] | None = None
    modalities: list[Literal["text", "image"]] = ["text"]

    def reports_logprobs(self) -> bool:
        return self.logprobs


# What each union field takes, said once for an error that fits none of its forms.
_UNION_FORMS = {
    "prompt": "a string, a list of strings, a list of token ids or a list of token-id lists",
    "stop": "a string or a list of at most 4 strings",
    "content": "a string or a list of content parts (text, image_url, input_audio, video_url)",
}


def describe_error(errors: list[dict]) -> tuple[str | None, str]:
    """pydantic's errors for a request body -> (the field, as the user wrote it; one message that
    says what would be accepted). A union reports a failure per form; the deepest one is the
    sender's actual mistake (a wrong part inside a content list, not "content is not a string")."""
    error = max(errors, key=lambda e: (len(e.get("loc", ())), not e["type"].endswith("_type")))
    where, union_at, tagged, inside = "", None, False, False  # inside: a field within one of a union's forms
    for part in error.get("loc", ()):
        if part == "body":
            continue
        if isinstance(part, int):
            where += f"[{part}]"
        elif "[" in part or part in ("str", "int"):  # a union's branch tag, e.g. list[int]
            union_at = union_at or where
            tagged = tagged or "tagged-union" in part
        elif tagged:  # a content part's loc names its type next ("text"), then its fields
            tagged, inside = False, True
        else:
            inside = inside or union_at is not None
            where += f".{part}" if where else part
    kind, ctx = error["type"], error.get("ctx") or {}
    if kind == "union_tag_invalid":
        where += ".type"
        message = f"part type {ctx.get('tag')!r} is not supported; use one of {ctx.get('expected_tags')}"
    elif kind.endswith("_type") and not inside and union_at is not None and union_at.rsplit(".", 1)[-1] in _UNION_FORMS:
        where = union_at
        message = f"expected {_UNION_FORMS[where.rsplit('.', 1)[-1]]}"
    elif kind == "extra_forbidden":
        message = "unknown field: not part of the OpenAI request this server accepts"
    elif kind == "missing":
        message = "required field is missing"
    else:
        message = error["msg"].removeprefix("Value error, ")
    return where or None, f"{where or 'body'}: {message}"
