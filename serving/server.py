"""What the HTTP layer serves: the engine's scheduler, the vocabulary, the limits, the metrics."""

from __future__ import annotations

import dataclasses
import time

from configs.base import Config
from data.segments import Image, Text
from data.vocab import Vocabulary
from serving.engine import Engine
from serving.media import FetchPolicy, png_data_url
from serving.metrics import ServingMetrics
from serving.scheduler import Scheduler
from tokenization.text import EOS


@dataclasses.dataclass
class Server:
    cfg: Config
    vocab: Vocabulary
    engine: Engine
    model_name: str
    api_key: str | None = None
    fetch_policy: FetchPolicy = FetchPolicy()  # remote image_url parts: none fetched by default
    # (stage, step) of the checkpoint served: ("sft", N) is instruction-tuned, and chats go through
    # the conversation template; ("lm", N) or None (random weights) is pre-trained only;
    # ("imported", 0) a Hugging Face checkpoint (serve.py --init-from hf:DIR).
    tuned: tuple[str, int] | None = None

    def __post_init__(self):
        self.metrics = ServingMetrics()
        self.scheduler = Scheduler(self.engine, self.cfg.serve.max_queue, self.metrics)
        self.ready = False
        self.started = int(time.time())
        self.max_body_bytes = self.cfg.serve.max_body_bytes
        self.real_vocab = self.engine.real_vocab

    @property
    def chat_template(self) -> bool:
        """Whether a chat becomes the conversation template's turns (data/conversation.py): only for
        an instruction-tuned model. A pre-trained one never saw a turn symbol; it gets the parts
        in order, as a completion, which is what its tasks look like."""
        return self.tuned is not None and self.tuned[0] in ("sft", "imported")

    def model_card(self) -> dict:
        """What /v1/models says of the model beyond OpenAI's fields: which training it had."""
        if self.tuned is None:
            return {"stage": "random", "note": "random weights (--random-init)"}
        stage, step = self.tuned
        if stage == "imported":
            return {"stage": "imported", "note": "a Hugging Face checkpoint: chats go through the conversation "
                    "template, whose <start_of_turn> and <end_of_turn> an instruction-tuned Gemma knows"}
        if stage == "sft":
            return {"stage": "sft", "step": step, "note": "instruction-tuned: chats go through the conversation template"}
        return {"stage": "pretrained", "step": step,
                "note": "pre-trained only (no SFT checkpoint): a chat's roles add no tokens"}

    def start(self) -> None:
        """Compile every program, then start taking requests (/health turns ready)."""
        self.engine.warm_up()
        self.scheduler.start()
        self.ready = True

    def stop(self) -> None:
        self.ready = False
        self.scheduler.stop()

    # ---- ids -> what a reply shows ------------------------------------------------------------
    def reply_text(self, ids) -> str:
        """A reply's text: its image and audio codes are dropped before decoding, as a whole reply's
        decode drops their runs. TextStream decodes a window of a few ids, which can start inside a
        run, and a code outside one reads as <unk>'s " ⁇ "."""
        text_ids = [i for i in ids if i < self.vocab.image_offset]
        return "".join(s.text for s in self.vocab.decode(text_ids, signals=False) if isinstance(s, Text))

    def token_text(self, token: int) -> str:
        """A token as logprobs show it: its text piece, or <image:N> / <audio:N> for a code."""
        if token >= self.vocab.audio_offset:
            return f"<audio:{token - self.vocab.audio_offset}>"
        if token >= self.vocab.image_offset:
            return f"<image:{token - self.vocab.image_offset}>"
        if not 0 <= token < self.vocab.text.size:  # never sampled (Engine.is_token); reported all the same
            return f"<unused:{token}>"
        return self.vocab.text.piece(token)

    def picture_url(self, codes_as_ids) -> str | None:
        """A generated picture as a PNG data URL; None when the codes do not make a whole image."""
        ids = [self.vocab.ids["<boi>"], *codes_as_ids, self.vocab.ids["<eoi>"]]
        images = [s for s in self.vocab.decode(ids) if isinstance(s, Image) and s.pixels is not None]
        return png_data_url(images[0].pixels) if images else None


def make_server(cfg: Config, vocab: Vocabulary, graphdef, state, mesh, is_token=None, **kwargs) -> Server:
    """`is_token`: the ids the model may produce (bool [vocab size]); every token by default."""
    engine = Engine(cfg.model, graphdef, state, mesh, cfg.serve.slots, cfg.serve.max_cache_len,
                    eos_id=vocab.ids[EOS], real_vocab=vocab.real_size, int8_weights=cfg.serve.int8_weights,
                    is_token=vocab.is_token() if is_token is None else is_token,
                    prefix_cache_tokens=cfg.serve.prefix_cache_tokens)
    return Server(cfg, vocab, engine, model_name=kwargs.pop("model_name", cfg.name), **kwargs)

