"""One process of a two-process CPU training run, or the one-process reference; prints one JSON object.

    python tests/multihost_check.py WORKDIR --coordinator localhost:PORT --process-id I   (I = 0, 1; 1 device each)
    XLA_FLAGS=--xla_force_host_platform_device_count=2 python tests/multihost_check.py WORKDIR --reference

WORKDIR holds what tests/test_multihost.py prepared: the world data (`world/`) and the text
tokenizer (`text.model`). The two processes train into WORKDIR/run, the reference into WORKDIR/reference.
"""

import argparse
import dataclasses
import json
from pathlib import Path

import grain
import jax
import numpy as np

import training.lm_stage
from data.pipeline import packed_batches
from tokenization.text import TextTokenizer
from data.vocab import Vocabulary
from data.world_builder import build_world
from tests.conftest import BlockColourCodec, FrameLevelCodec
from tests.helpers import WORLD_MODEL
from tests.test_lm_stage import small_config
from train import join_other_processes

PROCESSES, STEPS = 2, 4


def config():
    cfg = small_config()  # data=-1: the mesh is one data axis over both devices
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=STEPS, checkpoint_every=2))


def world_splits(workdir: Path) -> dict:
    return build_world(str(workdir / "world"), seed=2, train=60, validation=8, compositional=6).as_data_source()


def both_shares(sources, vocab, cfg, stats=None, weights=None, readers=None):
    """What the two processes read, side by side: process 0's rows, then process 1's, per batch."""
    shares = [packed_batches(sources, vocab, cfg, index, PROCESSES, stats, weights, readers)
              for index in range(PROCESSES)]
    return grain.experimental.ZipIterDataset(shares).map(
        lambda pair: {name: np.concatenate([part[name] for part in pair]) for name in pair[0]})


def main() -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("workdir", type=Path)
    parser.add_argument("--reference", action="store_true")
    parser.add_argument("--coordinator")
    parser.add_argument("--process-id", type=int)
    args = parser.parse_args()
    if args.reference:
        # The global batch the two processes assemble, fed by one process to its two devices.
        training.lm_stage.packed_batches = both_shares
        workdir = args.workdir / "reference"
    else:
        join_other_processes(argparse.Namespace(coordinator=args.coordinator, num_processes=PROCESSES,
                                                process_id=args.process_id))
        workdir = args.workdir / "run"
    vocab = Vocabulary(TextTokenizer.load(args.workdir / "text.model"), WORLD_MODEL,
                       image=BlockColourCodec(), audio=FrameLevelCodec())
    last = training.lm_stage.train_lm(config(), workdir, vocab, world_splits(args.workdir))
    # A second run restores the last checkpoint (every process its own data iterator) and finds nothing to do.
    again = training.lm_stage.train_lm(config(), workdir, vocab, world_splits(args.workdir))
    return {"process_index": jax.process_index(), "process_count": jax.process_count(),
            "devices": jax.device_count(), "local_devices": jax.local_device_count(), "last": last, "again": again}


if __name__ == "__main__":
    print(json.dumps(main()))
