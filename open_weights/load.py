"""`--init-from hf:DIR`: a Hugging Face checkpoint folder as this project's model config, text
tokenizer and parameters, for serve.py (text) and train.py (extended to images and audio)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from checkpoints import abstract_params, latest_stage, saved_config
from configs.base import Config, ModelConfig
from data.vocab import Vocabulary
from open_weights.architecture import model_config
from open_weights.tensors import Checkpoint, import_params
from open_weights.vocabulary import extend_json_tokenizer, extend_sentencepiece, new_rows
from tokenization.text import JsonTokenizer, TextTokenizer

# What the run's own config decides, whatever the checkpoint: how the model is computed, and its
# image and audio code ranges (the run's tokenizers).
RUN_FIELDS = ("param_dtype", "compute_dtype", "remat_policy", "scan_unroll", "attention_backend")
MODALITY_FIELDS = ("image_vocab_size", "audio_vocab_size", "image_code_levels", "audio_code_levels")


def hf_folder(spec: str) -> Path:
    """The folder of `hf:DIR`, checked to hold a Hugging Face checkpoint."""
    if not spec.startswith("hf:"):
        raise ValueError(f"--init-from {spec!r}: expected hf:DIR, a Hugging Face checkpoint folder")
    folder = Path(spec[3:]).expanduser()
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"--init-from {spec!r}: {folder} has no config.json (a Hugging Face checkpoint folder)")
    return folder


def text_tokenizer(folder: Path) -> TextTokenizer | JsonTokenizer:
    """The checkpoint's tokenizer (tokenizer.model, or tokenizer.json with tokenizer_config.json),
    extended with our control symbols after its own ids."""
    if (folder / "tokenizer.model").is_file():
        return TextTokenizer(extend_sentencepiece((folder / "tokenizer.model").read_bytes()),
                             source=str(folder / "tokenizer.model"))
    if (folder / "tokenizer.json").is_file() and (folder / "tokenizer_config.json").is_file():
        config = json.loads((folder / "tokenizer_config.json").read_text())
        return extend_json_tokenizer((folder / "tokenizer.json").read_text(), config)
    raise FileNotFoundError(f"{folder} has neither tokenizer.model nor tokenizer.json with tokenizer_config.json")


def imported_config(folder: Path, run: ModelConfig, text_size: int, modalities: bool) -> ModelConfig:
    """The checkpoint's architecture with the text ids of `text_size` pieces (its own and our
    symbols; at least its table's rows), how the run computes, and with `modalities` the run's image
    and audio code ranges after the text."""
    hf = json.loads((folder / "config.json").read_text())
    fields = {name: getattr(run, name) for name in RUN_FIELDS}
    if modalities:
        fields |= {name: getattr(run, name) for name in MODALITY_FIELDS}
    return model_config(hf, text_vocab_size=max(text_size, int(hf["vocab_size"])), **fields)


def import_model(folder: Path, cfg: ModelConfig, mesh: jax.sharding.Mesh, seed: int = 0
                 ) -> tuple[nnx.GraphDef, nnx.State]:
    """The checkpoint's parameters in `cfg`'s layout on `mesh`, each device reading its own slices;
    the ids it lacks get rows by open_weights/vocabulary.py's rule."""
    checkpoint = Checkpoint(folder)
    graphdef, abstract = abstract_params(cfg, mesh)
    return graphdef, import_params(folder, cfg, (graphdef, abstract), new_rows(checkpoint, seed), checkpoint)


def run_config(cfg: Config, workdir: Path | None = None) -> Config:
    """`cfg` as a run that starts from open weights has it (unchanged otherwise): the checkpoint's
    architecture, the text ids of its extended tokenizer, then the run's image and audio code
    ranges. The checkpoint is `train.init_from`, or the one `workdir`'s latest checkpoint was
    trained from (so `serve.py --workdir RUN` needs no flag). train.py and serve.py both resolve a
    run's config through this."""
    spec = cfg.train.init_from
    if not spec and workdir is not None:
        saved = saved_config(workdir, latest_stage(workdir))
        spec = saved and saved["train"].get("init_from")
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, init_from=spec)) if spec else cfg
    if not spec:
        return cfg
    folder = hf_folder(spec)
    size = text_tokenizer(folder).size
    return dataclasses.replace(cfg, model=imported_config(folder, cfg.model, size, modalities=True))


def text_model(folder: Path, cfg: Config, mesh: jax.sharding.Mesh) -> tuple[Config, Vocabulary, nnx.GraphDef, nnx.State]:
    """What serve.py serves of a checkpoint: `cfg` with its architecture (text ids only), its
    extended tokenizer as the vocabulary, and its parameters on `mesh`."""
    text = text_tokenizer(folder)
    cfg = dataclasses.replace(cfg, model=imported_config(folder, cfg.model, text.size, modalities=False))
    return (cfg, Vocabulary(text, cfg.model), *import_model(folder, cfg.model, mesh, cfg.train.seed))


def own_ids(folder: Path, vocab: Vocabulary) -> np.ndarray:
    """bool [vocab size]: the checkpoint's own ids, what a served import may produce. The ids added
    after them (our symbols) were never trained: their rows start near the average one, and in an
    untrained-looking distribution one of them could win a greedy step."""
    return vocab.is_token() & (np.arange(vocab.size) < json.loads((folder / "config.json").read_text())["vocab_size"])


def describe(folder: Path, cfg: ModelConfig) -> str:
    """One line for the logs: what was imported."""
    hf = json.loads((folder / "config.json").read_text())
    shape = dataclasses.asdict(cfg)
    return (f"{hf.get('model_type')} checkpoint {folder}: {shape['num_layers']} layers, d_model {shape['d_model']}, "
            f"{hf['vocab_size']} ids of its own, {cfg.vocab_size} in all")
