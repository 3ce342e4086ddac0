"""Tiny random Hugging Face models of the two families, saved as transformers saves them (no download).

Llama with grouped-query attention and an untied head; Gemma with multi-query attention, its
norms' weights drawn away from 0 so that their 1 + w scale is exercised. Each folder also holds a
Llama-style `tokenizer.model` of VOCAB pieces (<unk> <s> </s>, no pad, none of our symbols),
trained on the world's texts.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import jax
import sentencepiece as spm
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GemmaConfig, GemmaForCausalLM, LlamaConfig, LlamaForCausalLM

from checkpoints import abstract_params
from configs.base import MeshConfig, ModelConfig
from data.world import world_texts
from open_weights.architecture import model_config
from open_weights.tensors import import_params
from parallel.sharding import make_mesh

VOCAB = 300
SHAPE = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
             head_dim=16, max_position_embeddings=512, initializer_range=0.1)


def save_llama3_tokenizer(folder: Path) -> None:
    """A Llama 3 style tokenizer in `folder`: byte-level BPE in tokenizer.json (VOCAB ids, its last two
    <|begin_of_text|> and <|end_of_text|>) and a tokenizer_config.json naming them, no tokenizer.model."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB - 2, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tokenizer.train_from_iterator(world_texts(0, 2000), trainer)
    tokenizer.add_special_tokens(["<|begin_of_text|>", "<|end_of_text|>"])
    assert tokenizer.get_vocab_size() == VOCAB
    tokenizer.save(str(Path(folder) / "tokenizer.json"))
    (Path(folder) / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>"}))


def save_hf_model(family: str, folder: Path, **config) -> torch.nn.Module:
    """A random `family` ("llama" or "gemma") model in float32, saved to `folder` with its
    tokenizer.model; returned in eval mode. `config`: more fields of the family's config."""
    torch.manual_seed(0)
    if family == "llama":
        model = LlamaForCausalLM(LlamaConfig(**{**SHAPE, "num_key_value_heads": 2, "rope_theta": 500_000.0,
                                                "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2,
                                                **config}))
    else:
        model = GemmaForCausalLM(GemmaConfig(**SHAPE, num_key_value_heads=1, **config))
        with torch.no_grad():
            for name, weight in model.named_parameters():
                if "norm" in name:
                    weight.normal_(0, 0.5)
    model.save_pretrained(folder)
    sentencepiece = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(world_texts(0, 2000)), model_writer=sentencepiece,
                                   vocab_size=VOCAB, model_type="bpe", minloglevel=2)
    (Path(folder) / "tokenizer.model").write_bytes(sentencepiece.getvalue())
    return model.eval()


def float32_config(folder: Path, **overrides) -> ModelConfig:
    hf = json.loads((Path(folder) / "config.json").read_text())
    return model_config(hf, param_dtype="float32", compute_dtype="float32", remat_policy="none", **overrides)


def import_on_one_device(folder: Path, cfg: ModelConfig, **kwargs):
    """(graphdef, params) of the checkpoint in `folder` on a one-device mesh."""
    mesh = make_mesh(MeshConfig(data=1, fsdp=1, tensor=1), devices=jax.devices()[:1])
    graphdef, abstract = abstract_params(cfg, mesh)
    return graphdef, import_params(folder, cfg, (graphdef, abstract), **kwargs)
