"""Loading a trained run: the decoder's parameters from the latest LM checkpoint, and the three
tokenizers as one Vocabulary. train.py, serve.py and the benchmarks read runs through here.

    <workdir>/checkpoints/<step>/        orbax: train state, data iterator state, resolved config
    <workdir>/sft/checkpoints/<step>/    the same, instruction-tuned (the SFT stage), served when present
    <workdir>/tokenizers/text.model      SentencePiece model
    <workdir>/tokenizers/image/          orbax checkpoint of the image tokenizer's parameters
    <workdir>/tokenizers/audio/          orbax checkpoint of the audio tokenizer's parameters
    <workdir>/tokenizers/metrics.json    what the tokenizer stage measured (quality, seconds)
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Callable

import jax
import orbax.checkpoint as ocp
from flax import nnx

from configs.base import Config, ModelConfig
from data.vocab import Vocabulary
from data.world import world_texts
from model.transformer import Transformer
from parallel.sharding import state_shardings
from tokenization.audio import AudioCodec, AudioTokenizer
from tokenization.image import ImageCodec, ImageTokenizer
from tokenization.text import JsonTokenizer, TextTokenizer, load_text_tokenizer, train_text_tokenizer

CHECKPOINT_ITEMS = ("state", "data", "config")  # what every LM checkpoint step holds
TOKENIZER_DIR = "tokenizers"


def tokenizers_exist(workdir: Path) -> bool:
    root = Path(workdir) / TOKENIZER_DIR
    text = (root / TextTokenizer.FILE).exists() or (root / JsonTokenizer.FILE).exists()
    return text and all((root / name).exists() for name in ("image", "audio", "metrics.json"))


def adopt_tokenizers(source_run: Path, workdir: Path) -> str:
    """Give `workdir` the tokenizers of `source_run`, whose LM it will tune (`sft.init_from`): a
    model's ids mean what its tokenizers say. Copies them when `workdir` has none; refuses (ValueError)
    when it has others. Returns what it did, for the log."""
    theirs, ours = Path(source_run) / TOKENIZER_DIR, Path(workdir) / TOKENIZER_DIR
    if not tokenizers_exist(source_run):
        raise FileNotFoundError(f"sft.init_from: no trained tokenizers under {theirs}")
    if not tokenizers_exist(workdir):
        shutil.copytree(theirs, ours, dirs_exist_ok=True)
        return f"tokenizers: copied from {theirs}, with the LM they were trained with"
    same = [(theirs / name).read_bytes() == (ours / name).read_bytes() if (theirs / name).exists() else
            not (ours / name).exists() for name in (TextTokenizer.FILE, JsonTokenizer.FILE, "metrics.json")]
    if not all(same):
        raise ValueError(f"sft.init_from: {theirs} holds other tokenizers than {ours}; their LM's ids mean "
                         f"nothing with these. Use a fresh --workdir (the tokenizers are then copied)")
    return f"tokenizers: {ours} are {theirs}'s"


def save_tokenizer(path: Path, model: nnx.Module) -> None:
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(path, nnx.state(model, nnx.Param), force=True)
    checkpointer.wait_until_finished()


def _restore(path: Path, make: Callable[[], nnx.Module]) -> nnx.Module:
    abstract = nnx.eval_shape(make)
    graphdef, abstract_params, rest = nnx.split(abstract, nnx.Param, ...)
    # A whole copy on this process's first device: said explicitly, since orbax will not guess a
    # layout when the processes restoring differ from the one process that saved.
    here = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    abstract_params = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=here), abstract_params)
    params = ocp.StandardCheckpointer().restore(path, abstract_params)
    return nnx.merge(graphdef, params, rest)


def load_vocabulary(cfg: Config, workdir: Path) -> Vocabulary:
    """The trained tokenizers of `workdir`, as one Vocabulary that encodes and decodes every modality."""
    root = Path(workdir).absolute() / TOKENIZER_DIR
    if not tokenizers_exist(workdir):
        raise FileNotFoundError(f"no trained tokenizers under {root}; run `python train.py --config {cfg.name} "
                                f"--workdir {workdir} --stage tokenizers`")
    text = load_text_tokenizer(root)
    image = _restore(root / "image", lambda: ImageTokenizer(cfg.tokenizers.image, nnx.Rngs(0)))
    audio = _restore(root / "audio", lambda: AudioTokenizer(cfg.tokenizers.audio, nnx.Rngs(0)))
    return Vocabulary(text, cfg.model, image=ImageCodec(image), audio=AudioCodec(audio))


def untrained_vocabulary(cfg: Config) -> Vocabulary:
    """A vocabulary with nothing read from disk, for smoke tests (`serve.py --random-init`): the text
    tokenizer trained on a small sample of the world's text (seconds), image and audio tokenizers at
    their random initialisation (they encode and decode, meaninglessly)."""
    text = train_text_tokenizer(world_texts(cfg.data.seed, 2000), cfg.model.text_vocab_size)
    image = ImageTokenizer(cfg.tokenizers.image, nnx.Rngs(cfg.train.seed))
    audio = AudioTokenizer(cfg.tokenizers.audio, nnx.Rngs(cfg.train.seed))
    return Vocabulary(text, cfg.model, image=ImageCodec(image), audio=AudioCodec(audio))


def checkpoint_dir(workdir: Path, stage: str = "lm") -> Path:
    """Where a stage's checkpoints are: the LM's under <workdir>/checkpoints, SFT's under <workdir>/sft/."""
    return Path(workdir).absolute() / ("checkpoints" if stage == "lm" else "sft/checkpoints")


def latest_stage(workdir: Path) -> str:
    """"sft" when the run holds an SFT checkpoint (an instruction-tuned model), else "lm"."""
    folder = checkpoint_dir(workdir, "sft")
    return "sft" if folder.is_dir() and any(p.name.isdigit() for p in folder.iterdir()) else "lm"


def abstract_params(cfg: ModelConfig, mesh: jax.sharding.Mesh) -> tuple[nnx.GraphDef, nnx.State]:
    """The model's parameters as shapes with their shardings on `mesh`: what a restore or an import fills."""
    graphdef, params = nnx.split(nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0))), nnx.Param)
    return graphdef, jax.tree.map(
        lambda var, sharding: var.replace(jax.ShapeDtypeStruct(var.shape, var.dtype, sharding=sharding)),
        params, state_shardings(params, mesh), is_leaf=lambda x: isinstance(x, nnx.Variable))


def saved_config(workdir: Path, stage: str = "lm") -> dict | None:
    """The config (as JSON) the latest checkpoint of `stage` under `workdir` was trained with; None
    when there is no checkpoint."""
    folder = checkpoint_dir(workdir, stage)
    if not folder.is_dir():
        return None
    manager = ocp.CheckpointManager(folder, item_names=CHECKPOINT_ITEMS)
    step = manager.latest_step()
    saved = None if step is None else manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]
    manager.close()
    return saved


def restore_params(cfg: Config, workdir: Path, mesh: jax.sharding.Mesh,
                   stage: str = "lm") -> tuple[nnx.GraphDef, nnx.State, int]:
    """(graphdef, params, step) of the latest checkpoint of `stage` under `workdir`, laid out for `mesh`.

    The model config must match the one the checkpoint was trained with: a mismatch raises naming
    the fields that differ (pass them as flags, e.g. `--model.num-kv-heads 4`).
    """
    folder = checkpoint_dir(workdir, stage)
    manager = ocp.CheckpointManager(folder, item_names=CHECKPOINT_ITEMS)
    step = manager.latest_step()
    if step is None:
        raise FileNotFoundError(f"no checkpoint under {folder}: train first "
                                f"(python train.py --config {cfg.name} --workdir {workdir}) or pass --random-init")
    saved = manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]["model"]
    ours = dataclasses.asdict(cfg.model)
    differ = [f"model.{k}: checkpoint {saved[k]!r}, config {ours[k]!r}" for k in ours
              if k in saved and _plain(saved[k]) != _plain(ours[k])]
    if differ:
        raise ValueError(f"the checkpoint at step {step} was trained with another model: {'; '.join(differ)}")
    graphdef, abstract = abstract_params(cfg.model, mesh)
    target = {"params": abstract}
    # Only the parameters are read: the optimizer state in the checkpoint is left on disk.
    restore = ocp.args.PyTreeRestore(item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
                                     partial_restore=True)
    with jax.set_mesh(mesh):
        state = manager.restore(step, args=ocp.args.Composite(state=restore))["state"]
    manager.close()
    # A partial restore leaves what the checkpoint lacks as shapes: a model newer than its checkpoint.
    missing = [jax.tree_util.keystr(path) for path, leaf in jax.tree_util.tree_flatten_with_path(state["params"])[0]
               if isinstance(leaf, jax.ShapeDtypeStruct)]
    if missing:
        raise ValueError(f"the checkpoint at step {step} under {workdir} has no {', '.join(missing)}: it was trained "
                         "with an older model; train again (or resume from a matching checkpoint)")
    return graphdef, state["params"], step


def _plain(value):
    return list(value) if isinstance(value, tuple) else value
