"""A run as a Hugging Face checkpoint that `transformers` loads as it is:

    python -m open_weights.export --config tiny --workdir runs/tiny --out exported/tiny [--stage lm]

Writes, in the family whose layout the model is (open_weights/architecture.py: ours is Llama's):
config.json, model.safetensors (or shards and their index), generation_config.json, and the
run's tokenizer: its SentencePiece model as tokenizer.model (or its tokenizer.json), every id past
its own named as an added token (`<unused_N>` up to the image codes, then `<image_N>` and
`<audio_N>`), so the tokenizer knows the whole extended vocabulary.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Literal

from flax import nnx
from tokenizers import AddedToken, Tokenizer

from checkpoints import TOKENIZER_DIR, latest_stage, restore_params
from configs.base import ModelConfig
from configs.cli import parse
from open_weights.architecture import FAMILIES, UnsupportedCheckpoint, family_of, hf_config
from open_weights.load import run_config
from open_weights.tensors import export_tensors, save_tensors
from parallel.sharding import make_mesh
from tokenization.text import BOS, EOS, PAD, JsonTokenizer, TextTokenizer, load_text_tokenizer

TOKENIZER_CLASSES = {"llama": "LlamaTokenizer", "gemma": "GemmaTokenizer"}


@dataclasses.dataclass(frozen=True)
class ExportFlags:
    """The export's own flags; every config field is a flag too (configs/cli.py)."""

    out: str | None = None
    """the folder the Hugging Face checkpoint is written to (required)"""
    workdir: str | None = None
    """the run to export (default: runs/<preset>)"""
    stage: Literal["latest", "lm", "sft"] = "latest"
    """which checkpoint: the run's latest stage (SFT when it has one), or the LM's or SFT's"""


def added_names(cfg: ModelConfig, text: TextTokenizer | JsonTokenizer) -> list[str]:
    """Names for every id past the text tokenizer's: `<unused_N>` up to the image codes, then the codes."""
    return ([f"<unused_{i}>" for i in range(text.size, cfg.text_vocab_size)] +
            [f"<image_{i}>" for i in range(cfg.image_vocab_size)] + [f"<audio_{i}>" for i in range(cfg.audio_vocab_size)])


def write_tokenizer(cfg: ModelConfig, text: TextTokenizer | JsonTokenizer, family: str, out: Path) -> None:
    """The run's text tokenizer as transformers reads it, every id past its own named as an added
    token: tokenizer.model (SentencePiece) or tokenizer.json, and tokenizer_config.json."""
    names = added_names(cfg, text)
    if isinstance(text, JsonTokenizer):
        tokenizer = Tokenizer.from_str(text.tokenizer.to_str())
        tokenizer.add_special_tokens([AddedToken(name, special=True, normalized=False) for name in names])
        (out / "tokenizer.json").write_text(tokenizer.to_str())
        config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": text.specials[BOS],
                  "eos_token": text.specials[EOS], "pad_token": text.specials[PAD]}
    else:
        text.save(out / "tokenizer.model")
        piece = text.processor.id_to_piece
        config = {"tokenizer_class": TOKENIZER_CLASSES[family], "bos_token": piece(text.ids[BOS]),
                  "eos_token": piece(text.ids[EOS]), "pad_token": piece(text.ids[PAD]),
                  "unk_token": piece(text.processor.unk_id()), "add_bos_token": True, "add_eos_token": False,
                  "mask_token": None,  # GemmaTokenizer would otherwise add a <mask> past every id
                  "added_tokens_decoder": {str(text.size + i): {
                      "content": name, "special": True, "lstrip": False, "rstrip": False, "normalized": False,
                      "single_word": False} for i, name in enumerate(names)}}
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=1))


def write_checkpoint(cfg: ModelConfig, graphdef: nnx.GraphDef, params: nnx.State, text: TextTokenizer | JsonTokenizer,
                     out: Path) -> str:
    """The model and its tokenizer as a Hugging Face checkpoint in `out`; returns the family written."""
    family = family_of(cfg)  # a model neither family can hold is refused before anything is written
    ids = {"bos": text.ids[BOS], "eos": text.ids[EOS], "pad": text.ids[PAD]}
    save_tensors(export_tensors(cfg, graphdef, params), out)
    (out / "config.json").write_text(json.dumps(hf_config(cfg, ids), indent=2))
    (out / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": ids["bos"], "eos_token_id": ids["eos"], "pad_token_id": ids["pad"]}, indent=2))
    write_tokenizer(cfg, text, family, out)
    return family


def main() -> None:
    cfg, flags = parse(prog="python -m open_weights.export", flags=ExportFlags, program="serve")
    if not flags.out:
        sys.exit("open_weights.export: --out DIR is required")
    workdir = Path(flags.workdir or f"runs/{cfg.name}")
    try:
        cfg = run_config(cfg, workdir)  # a run trained from open weights has that checkpoint's architecture
        family_of(cfg.model)
        stage = latest_stage(workdir) if flags.stage == "latest" else flags.stage
        graphdef, params, step = restore_params(cfg, workdir, make_mesh(cfg.mesh), stage)
        text = load_text_tokenizer(workdir / TOKENIZER_DIR)
    except (ValueError, FileNotFoundError, UnsupportedCheckpoint) as error:
        sys.exit(f"open_weights.export: {error}")
    out = Path(flags.out)
    family = write_checkpoint(cfg.model, graphdef, params, text, out)
    print(f"wrote {out}: {FAMILIES[family]}, {stage} checkpoint at step {step} of {workdir}, "
          f"{cfg.model.vocab_size} ids ({text.size} text pieces, then image and audio codes)")


if __name__ == "__main__":
    main()
