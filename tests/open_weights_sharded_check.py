"""Run in a subprocess with 8 simulated CPU devices (tests/test_open_weights_sharded.py); prints one JSON
object of facts: a Hugging Face checkpoint imported onto an fsdp=4 x tensor=2 mesh."""

import json
import sys
import tempfile
from pathlib import Path

import jax
import numpy as np

from checkpoints import abstract_params
from configs.base import MeshConfig
from open_weights.tensors import Checkpoint, import_params
from parallel.sharding import make_mesh
from tests.hf_models import float32_config, import_on_one_device, save_hf_model


def main() -> dict:
    assert jax.device_count() == 8
    folder = Path(tempfile.mkdtemp()) / "llama"
    save_hf_model("llama", folder)
    cfg = float32_config(folder)
    mesh = make_mesh(MeshConfig(data=1, fsdp=4, tensor=2))
    graphdef, abstract = abstract_params(cfg, mesh)
    checkpoint = Checkpoint(folder)
    reads: list[int] = []  # the elements of every slice read
    read = checkpoint.read

    def logged(name, where):
        array = read(name, where)
        reads.append(array.size)
        return array

    checkpoint.read = logged
    params = import_params(folder, cfg, (graphdef, abstract), checkpoint=checkpoint)
    _, whole = import_on_one_device(folder, cfg)
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    same = all(np.array_equal(np.asarray(a), np.asarray(b)) for (_, a), b in zip(leaves, jax.tree.leaves(whole)))
    per_device = {str(d.id): 0 for d in mesh.devices.flat}
    for _, leaf in leaves:
        for shard in leaf.addressable_shards:
            per_device[str(shard.device.id)] += int(np.prod(shard.data.shape))
    stored = sum(int(np.prod(checkpoint.shape(name))) for name in checkpoint.file_of)
    split = {jax.tree_util.keystr(path): [len(set(str(s.index) for s in leaf.addressable_shards)), leaf.shape]
             for path, leaf in leaves}
    return {"same_as_one_device": same, "elements_read": sum(reads), "largest_read": max(reads),
            "elements_held": sum(per_device.values()), "stored_elements": stored,
            "largest_tensor": max(int(np.prod(checkpoint.shape(n))) for n in checkpoint.file_of), "split": split}


if __name__ == "__main__":
    print(json.dumps(main()))
    sys.stdout.flush()
