"""The tensors of a Hugging Face Llama/Gemma checkpoint as the model's parameters, and back.

Each parameter is its Hugging Face tensor(s) permuted and reshaped: `LAYOUTS` says how, as the
symbols of each side's axes (`q_proj` is [(heads, head_dim), d_model], the model's `q_dnh`
[d_model, heads, head_dim]; a block's parameters carry a leading layers axis, one Hugging Face
tensor per layer).

Import is sharded: every parameter is made with `jax.make_array_from_callback`, whose callback
is asked, per device, for that device's slice only, and reads just that slice from the
safetensors files (`safe_open(...).get_slice`). No host ever holds more of a tensor than its
devices do, whatever the model's size. Ids past the checkpoint's vocabulary (the padding to a
multiple of 128, and our control symbols and codes when the vocabulary is extended) get their
rows from `extra_rows`.

Export gathers each parameter to the host and writes it back in the Hugging Face layout, the
tied table with its digit rows folded in (model/layers.py, Embedding.table).
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Callable

import jax
import numpy as np
from flax import nnx
from safetensors import safe_open
from safetensors.numpy import save_file

from configs.base import ModelConfig
from open_weights.architecture import UnsupportedCheckpoint


@dataclasses.dataclass(frozen=True)
class Layout:
    name: str  # the Hugging Face tensor; {layer} for a block's
    hf: tuple[tuple[str, ...], ...]  # its axes, each one symbol or two merged (major first)
    ours: tuple[str, ...]  # the model's axes (the layers axis aside)


LAYOUTS = {
    ("embedding", "table_vd"): Layout("model.embed_tokens.weight", (("V",), ("D",)), ("V", "D")),
    ("unembed_dv",): Layout("lm_head.weight", (("V",), ("D",)), ("D", "V")),
    ("final_norm", "scale"): Layout("model.norm.weight", (("D",),), ("D",)),
    ("blocks", "attention_norm", "scale"): Layout("model.layers.{layer}.input_layernorm.weight", (("D",),), ("D",)),
    ("blocks", "mlp_norm", "scale"): Layout("model.layers.{layer}.post_attention_layernorm.weight", (("D",),), ("D",)),
    ("blocks", "attention", "q_dnh"): Layout("model.layers.{layer}.self_attn.q_proj.weight", (("N", "H"), ("D",)), ("D", "N", "H")),
    ("blocks", "attention", "k_dkh"): Layout("model.layers.{layer}.self_attn.k_proj.weight", (("K", "H"), ("D",)), ("D", "K", "H")),
    ("blocks", "attention", "v_dkh"): Layout("model.layers.{layer}.self_attn.v_proj.weight", (("K", "H"), ("D",)), ("D", "K", "H")),
    ("blocks", "attention", "o_nhd"): Layout("model.layers.{layer}.self_attn.o_proj.weight", (("D",), ("N", "H")), ("N", "H", "D")),
    ("blocks", "mlp", "gate_dm"): Layout("model.layers.{layer}.mlp.gate_proj.weight", (("M",), ("D",)), ("D", "M")),
    ("blocks", "mlp", "up_dm"): Layout("model.layers.{layer}.mlp.up_proj.weight", (("M",), ("D",)), ("D", "M")),
    ("blocks", "mlp", "down_md"): Layout("model.layers.{layer}.mlp.down_proj.weight", (("D",), ("M",)), ("M", "D")),
}


def sizes(cfg: ModelConfig, vocab: int) -> dict[str, int]:
    return {"V": vocab, "D": cfg.d_model, "N": cfg.num_heads, "K": cfg.num_kv_heads, "H": cfg.head_dim,
            "M": cfg.mlp_dim}


def _key(path) -> tuple[str, ...]:
    return tuple(str(getattr(p, "key", getattr(p, "name", p))) for p in path if getattr(p, "name", None) != "value")


class Checkpoint:
    """A Hugging Face checkpoint's safetensors files, read a slice at a time; `reads` logs the
    element count of every slice read (what a test checks sharding against)."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        index = self.folder / "model.safetensors.index.json"
        if index.is_file():
            self.file_of = json.loads(index.read_text())["weight_map"]
        elif (self.folder / "model.safetensors").is_file():
            with safe_open(self.folder / "model.safetensors", framework="numpy") as f:
                self.file_of = dict.fromkeys(f.keys(), "model.safetensors")
        else:
            raise FileNotFoundError(f"{self.folder}: no model.safetensors or model.safetensors.index.json "
                                    "(a Hugging Face checkpoint saved with safetensors)")
        self._open: dict[str, object] = {}
        self.reads: list[int] = []

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._slice(name).get_shape())

    def _slice(self, name: str):
        if name not in self.file_of:
            raise UnsupportedCheckpoint(f"{self.folder}: the checkpoint has no tensor {name!r}")
        file = self.file_of[name]
        if file not in self._open:
            self._open[file] = safe_open(self.folder / file, framework="numpy")
        return self._open[file].get_slice(name)

    def read(self, name: str, where: tuple[slice, ...]) -> np.ndarray:
        array = self._slice(name)[where]
        self.reads.append(array.size)
        return array


def read_shard(checkpoint: Checkpoint, layout: Layout, size: dict[str, int], index: tuple[slice, ...],
               layer: int | None, extra_rows: Callable[[str, int, int], np.ndarray] | None) -> np.ndarray:
    """The slice `index` (over the model's axes) of one layer's parameter, read from its tensor.

    A merged axis is read whole in its minor part (a head's every dimension), then sliced."""
    want = {symbol: range(*where.indices(size[symbol])) for symbol, where in zip(layout.ours, index)}
    name = layout.name.format(layer=layer)
    have = dict(want)
    if "V" in want:  # the rows the checkpoint holds; the rest come from extra_rows
        stored = checkpoint.shape(name)[layout.hf.index(("V",))]
        have["V"] = range(want["V"].start, max(want["V"].start, min(want["V"].stop, stored)))
    where, view, inner = [], [], []
    for group in layout.hf:
        if len(group) == 1:
            rows = have[group[0]]
            where.append(slice(rows.start, rows.stop))
            view.append(len(rows))
            inner.append(slice(None))
        else:
            major, minor = group
            rows = have[major]
            where.append(slice(rows.start * size[minor], rows.stop * size[minor]))
            view += [len(rows), size[minor]]
            inner += [slice(None), slice(have[minor].start, have[minor].stop)]
    array = checkpoint.read(name, tuple(where)).reshape(view)[tuple(inner)]
    symbols = [symbol for group in layout.hf for symbol in group]
    array = array.transpose([symbols.index(symbol) for symbol in layout.ours])
    if "V" in want and len(have["V"]) < len(want["V"]):
        first, stop = have["V"].stop, want["V"].stop
        rows = extra_rows(name, first, stop) if extra_rows else np.zeros((stop - first, size["D"]), array.dtype)
        rows = rows[:, want["D"].start:want["D"].stop].astype(array.dtype)
        array = np.concatenate([array, rows if layout.ours.index("V") == 0 else rows.T], axis=layout.ours.index("V"))
    return array


def _shape_of(index: tuple[slice, ...], shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(len(range(*where.indices(size))) for where, size in zip(index, shape))


def import_params(folder: Path, cfg: ModelConfig, graphdef_and_abstract: tuple[nnx.GraphDef, nnx.State],
                  extra_rows: Callable[[str, int, int], np.ndarray] | None = None,
                  checkpoint: Checkpoint | None = None) -> nnx.State:
    """The model's parameters (laid out as `graphdef_and_abstract`'s shapes and shardings: from
    checkpoints.abstract_params) read from the Hugging Face checkpoint in `folder`, each device's
    slice read by itself. `extra_rows(tensor, first, stop)` gives a table's rows for ids the
    checkpoint lacks (zeros without it: open_weights/vocabulary.py has the rule for new ids). The
    code-digit rows of factorised code embeddings (model/layers.py) start at zero, so each code's
    embedding starts as its own row. A tensor missing, or of another shape, raises naming it."""
    checkpoint = checkpoint or Checkpoint(folder)
    _, abstract = graphdef_and_abstract
    known = {name for name in checkpoint.file_of}
    vocab = cfg.vocab_size

    def make(path, variable):
        key, value = _key(path), variable.get_value()
        if key == ("embedding", "digits_ld"):
            return variable.replace(jax.make_array_from_callback(
                value.shape, value.sharding, lambda index: np.zeros(_shape_of(index, value.shape), value.dtype)))
        layout = LAYOUTS[key]
        size, shape = sizes(cfg, vocab), value.shape
        layers = key[0] == "blocks"
        for layer in (range(cfg.num_layers) if layers else [None]):
            name = layout.name.format(layer=layer)
            hf_vocab = checkpoint.shape(name)[layout.hf.index(("V",))] if "V" in layout.ours else None
            expected = tuple(math.prod(size[s] for s in group) if group != ("V",) else hf_vocab for group in layout.hf)
            if checkpoint.shape(name) != expected or (hf_vocab is not None and hf_vocab > vocab):
                raise UnsupportedCheckpoint(f"{folder}: tensor {name} has shape {checkpoint.shape(name)}, the model "
                                            f"expects {expected}" + (f" with at most {vocab} rows" if hf_vocab else ""))
            known.discard(name)
        dtype = value.dtype

        def shard(index: tuple[slice, ...]) -> np.ndarray:
            if not layers:
                return read_shard(checkpoint, layout, size, index, None, extra_rows).astype(dtype)
            return np.stack([read_shard(checkpoint, layout, size, index[1:], layer, extra_rows)
                             for layer in range(*index[0].indices(shape[0]))]).astype(dtype)

        return variable.replace(jax.make_array_from_callback(shape, value.sharding, shard))

    params = jax.tree_util.tree_map_with_path(make, abstract, is_leaf=lambda x: isinstance(x, nnx.Variable))
    unused = sorted(name for name in known if "rotary_emb" not in name)
    if unused:
        raise UnsupportedCheckpoint(f"{folder}: tensors the model has no place for: {', '.join(unused[:5])}"
                                    + (f" and {len(unused) - 5} more" if len(unused) > 5 else ""))
    return params


def export_tensors(cfg: ModelConfig, graphdef: nnx.GraphDef, params: nnx.State) -> dict[str, np.ndarray]:
    """Every parameter in its Hugging Face tensor(s), on this host (gathered: export runs on one)."""
    size = sizes(cfg, cfg.vocab_size)
    model = nnx.merge(graphdef, params)
    table = np.asarray(jax.device_get(model.embedding.table().array()))  # code-digit rows folded in
    tensors = {}
    for path, variable in jax.tree_util.tree_flatten_with_path(params, is_leaf=lambda x: isinstance(x, nnx.Variable))[0]:
        key = _key(path)
        if key == ("embedding", "digits_ld"):
            continue
        layout = LAYOUTS[key]
        array = table if key == ("embedding", "table_vd") else np.asarray(jax.device_get(variable.get_value()))
        symbols = [symbol for group in layout.hf for symbol in group]
        shape = [math.prod(size[symbol] for symbol in group) for group in layout.hf]

        def hf(ours: np.ndarray) -> np.ndarray:
            return np.ascontiguousarray(ours.transpose([layout.ours.index(s) for s in symbols]).reshape(shape))

        if key[0] == "blocks":
            tensors.update({layout.name.format(layer=layer): hf(array[layer]) for layer in range(cfg.num_layers)})
        else:
            tensors[layout.name] = hf(array)
    return tensors


def save_tensors(tensors: dict[str, np.ndarray], folder: Path, shard_bytes: int = 4 << 30) -> None:
    """model.safetensors, or shards of at most `shard_bytes` with transformers' index file."""
    folder.mkdir(parents=True, exist_ok=True)
    shards: list[dict[str, np.ndarray]] = [{}]
    for name, array in tensors.items():
        if shards[-1] and sum(a.nbytes for a in shards[-1].values()) + array.nbytes > shard_bytes:
            shards.append({})
        shards[-1][name] = array
    if len(shards) == 1:
        save_file(shards[0], str(folder / "model.safetensors"), metadata={"format": "pt"})
        return
    weight_map = {}
    for number, shard in enumerate(shards, 1):
        file = f"model-{number:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(folder / file), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, file))
    total = sum(array.nbytes for array in tensors.values())
    (folder / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
