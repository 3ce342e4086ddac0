"""Export a run to a Hugging Face checkpoint, load it in transformers, import it back; prints one JSON line.

    python bench/round_trip.py --workdir runs/tiny --out /tmp/tiny-hf [--stage lm]

Measures: the export's seconds and bytes, transformers' logits against ours on held-out world
prompts (text, image and audio ids: max absolute difference, and whether the greedy next token
agrees), and the logits of the export imported back (as a text model whose ids are all the checkpoint's own:
the digit rows of factorised code embeddings come back folded into the table).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from checkpoints import load_vocabulary, restore_params
from configs import get_config
from configs.base import MeshConfig
from data import world
from data.segments import Image, Text
from data.templates import CAPTION_PROMPT
from model.transformer import forward
from open_weights.export import write_checkpoint
from open_weights.load import import_model, imported_config, text_tokenizer
from parallel.sharding import make_mesh


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="runs/tiny")
    parser.add_argument("--config", default="tiny")
    parser.add_argument("--out", required=True)
    parser.add_argument("--stage", default="lm", choices=("lm", "sft"))
    args = parser.parse_args()
    cfg = get_config(args.config)
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, compute_dtype="float32"))  # exact comparisons
    mesh = make_mesh(MeshConfig(data=1, fsdp=1, tensor=1))
    workdir, out = Path(args.workdir), Path(args.out)
    vocab = load_vocabulary(cfg, workdir)
    graphdef, params, step = restore_params(cfg, workdir, mesh, args.stage)

    started = time.perf_counter()
    family = write_checkpoint(cfg.model, graphdef, params, vocab.text, out)
    export_s = time.perf_counter() - started
    size = sum(p.stat().st_size for p in out.iterdir())

    rng = np.random.default_rng(7)
    prompts = []
    for _ in range(8):
        attributes = world.sample_attributes(rng, "validation")
        picture = Image(pixels=world.render_image(rng, *attributes))
        prompts.append(vocab.encode([Text(CAPTION_PROMPT), picture, Text(world.caption(*attributes))], eos=False).ids)
    length = min(len(p) for p in prompts)
    tokens = np.stack([p[:length] for p in prompts])

    started = time.perf_counter()
    hf = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    load_s = time.perf_counter() - started
    with torch.no_grad():
        theirs = hf(torch.tensor(tokens)).logits.numpy()
    ours = np.asarray(forward(graphdef, params, jnp.asarray(tokens))[0])

    started = time.perf_counter()
    text = text_tokenizer(out)
    again_cfg = imported_config(out, cfg.model, text.size, modalities=False)  # every id is the checkpoint's own
    again_graphdef, again = import_model(out, again_cfg, mesh)
    import_s = time.perf_counter() - started
    reimported = np.asarray(forward(again_graphdef, again, jnp.asarray(tokens))[0])
    print(json.dumps({
        "workdir": str(workdir), "stage": args.stage, "step": step, "family": family, "export_s": round(export_s, 2),
        "bytes": size, "transformers_load_s": round(load_s, 2), "tokens": int(tokens.size),
        "max_abs_logit_diff_transformers": float(np.abs(theirs - ours).max()),
        "greedy_agreement_transformers": float((theirs.argmax(-1) == ours.argmax(-1)).mean()),
        "tokenizer_pieces_equal": tokenizer.encode("a small red circle") == [vocab.ids["<bos>"], *vocab.text.encode("a small red circle")],
        "import_s": round(import_s, 2), "max_abs_logit_diff_reimport": float(np.abs(reimported - ours).max()),
    }))


if __name__ == "__main__":
    main()
