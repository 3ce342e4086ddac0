"""Compile-only checks for TPU slices (parallel/topologies.py, parallel/aot.py): slice names, the tiny and a
depth-reduced nano preset compiled for small slices, a config too big for its slice, and the plans
the presets promise. Compiling for TPU needs libtpu (the `tpu` extra, which .ci/run installs)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from configs import get_config, plans
from parallel.topologies import parse_topology

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("name, chips, slices, libtpu_name", [
    ("v5e-1", 1, 1, "v5e:1x1"),
    ("v5e-16", 16, 1, "v5e:4x4"),
    ("v5e-256", 256, 1, "v5e:16x16"),
    ("v6e-256", 256, 1, "v6e:16x16"),
    ("v5p-8", 4, 1, "v5:2x2x1"),
    ("v5p-64", 32, 1, "v5:2x4x4"),
    ("v5p-128", 64, 1, "v5:4x4x4"),
    ("v5p-1024", 512, 1, "v5:8x8x8"),
    ("2x v5e-256", 512, 2, "v5e:16x16"),
])
def test_slice_names_map_to_chips_and_libtpu_topologies(name, chips, slices, libtpu_name):
    topology = parse_topology(name)
    assert (topology.chips, topology.slices, topology.libtpu_name) == (chips, slices, libtpu_name)


@pytest.mark.parametrize("name, complaint", [
    ("v5e-12", "powers of two"), ("v5p-7", "odd"), ("tpu-8", "Cloud TPU slice name"), ("v5p-2", "powers of two")])
def test_a_bad_slice_name_is_refused_naming_what_is_wrong(name, complaint):
    with pytest.raises(ValueError, match=complaint):
        parse_topology(name)


def compile_only(script: str, *flags: str) -> tuple[subprocess.CompletedProcess, dict | None]:
    run = subprocess.run([sys.executable, str(ROOT / script), "--compile-only", *flags], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    reports = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    return run, (reports[-1] if reports else None)


def check_report(report: dict, preset: str, chips: int) -> None:
    memory = report["per_chip_gib"]
    assert report["preset"] == preset and report["chips"] == chips
    assert memory["arguments"] > 0 and memory["total"] >= memory["arguments"] + memory["temporaries"]
    assert memory["total"] < memory["capacity"] and report["fits_with_margin"]
    assert report["holds_a_clip"] and 0 < report["clip_tokens"] <= report["row_tokens"]
    assert 0 < report["mfu_ceiling"] <= 1
    # XLA counts the whole program (norms, softmax, the optimizer, recomputation): at least the model's
    # matmul arithmetic, not far above it.
    flops = report["flops_per_chip"]
    assert 0.95 <= flops["xla"] / flops["analytic"] <= 1.6, flops


@pytest.mark.slow  # compiles for TPU in a subprocess
def test_tiny_train_step_compiles_for_a_v5e_4_slice_and_reports_per_chip_memory():
    run, report = compile_only("train.py", "--config", "tiny", "--topology", "v5e-4")
    assert run.returncode == 0, run.stderr[-2000:]
    check_report(report, "tiny", 4)
    assert report["mesh"]["data"] == 4 and report["program"] == "train step"
    assert report["pallas_kernels"] == 0  # the tiny preset's attention is XLA's


@pytest.mark.slow  # compiles for TPU in a subprocess
def test_depth_reduced_nano1_trains_on_v5e_16_with_its_plan():
    run, report = compile_only("train.py", "--config", "nano1", "--topology", "v5e-16", "--model.num-layers", "2")
    assert run.returncode == 0, run.stderr[-2000:]
    check_report(report, "nano1", 16)
    assert report["mesh"]["fsdp"] == 16  # the plan's mesh, not the preset's default
    # Full FSDP: each chip holds 1/16 of the 2-layer model's 0.81B float32 weights and two Adam moments
    # (0.57 GiB; a whole copy would be 9.1 GiB).
    assert 0.5 < report["per_chip_gib"]["arguments"] < 0.65
    # Splash attention, compiled into the TPU program: the forward kernel (run again under full remat)
    # and the backward's dq and dkv kernels.
    assert report["pallas_kernels"] >= 3


@pytest.mark.slow  # compiles for TPU in a subprocess
@pytest.mark.parametrize("int8", [False, True])
def test_tiny_decode_step_compiles_for_one_v5e_chip(int8):
    run, report = compile_only("serve.py", "--config", "tiny", "--topology", "v5e-1",
                               *(["--serve.int8-weights"] if int8 else []))
    assert run.returncode == 0, run.stderr[-2000:]
    check_report(report, "tiny", 1)
    assert report["program"] == "decode step (8 slots x 512 tokens" + (", int8 weights)" if int8 else ")")
    # The tiny model's 4.6M float32 parameters (18.4 MB), or a quarter of that in int8, beside an
    # 8 x 512-token cache of 4 layers' float32 keys and values (8.4 MB).
    assert report["per_chip_gib"]["arguments"] * 2**30 == pytest.approx(12.9e6 if int8 else 26.8e6, rel=0.05)
    # Beside the step, the prefix cache's pool: 8,192 tokens of the same float32 keys and values (16.8 MB).
    assert report["per_chip_gib"]["beside_the_program"] * 2**30 == pytest.approx(8192 * 4 * 2 * 64 * 4, rel=0.05)


@pytest.mark.slow  # compiles for TPU in a subprocess
def test_a_config_too_big_for_its_slice_is_reported_not_fitting_naming_preset_and_memory():
    # 16 rows of 2048 tokens a chip at once: the float32 logits alone are 44 GB.
    run, report = compile_only("train.py", "--config", "nano1", "--topology", "v5e-16", "--model.num-layers", "2",
                               "--train.grad-accum-steps", "1")
    assert run.returncode == 1 and report is None
    assert "nano1 train step does not fit v5e-16" in run.stderr
    assert "GiB" in run.stderr and "exceeds available HBM" in run.stderr


@pytest.mark.slow  # starts train.py
def test_compile_only_without_a_topology_says_what_is_missing():
    run, _ = compile_only("train.py", "--config", "tiny")
    assert run.returncode == 2 and "--compile-only needs --topology" in run.stderr


def test_a_two_slice_plan_puts_only_the_dcn_data_axis_across_the_slices():
    code = ("import json; from parallel.aot import compile_on_cpu; compile_on_cpu()\n"
            "from configs import get_config; from parallel.sharding import make_mesh; from parallel.topologies import parse_topology\n"
            "mesh = make_mesh(get_config('pro', '2x v5e-256').mesh, parse_topology('2x v5e-256').devices())\n"
            "print(json.dumps({'shape': dict(mesh.shape), 'slices': [sorted({d.slice_index for d in part.flat}) for part in mesh.devices]}))")
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    facts = json.loads(run.stdout.strip().splitlines()[-1])
    assert facts["shape"] == {"dcn_data": 2, "data": 1, "fsdp": 32, "tensor": 8}
    assert facts["slices"] == [[0], [1]]  # each dcn_data index is one whole slice: fsdp and tensor stay inside


@pytest.mark.parametrize("preset, program, topology", [
    ("ultra", "train", "v5p-1024"), ("pro", "train", "v5p-128"), ("pro", "train", "v5e-256"), ("pro", "train", "2x v5e-256"),
    ("nano1", "train", "v5e-16"), ("nano2", "train", "v5e-16"),
    ("ultra", "serve", "v5p-64"), ("pro", "serve", "v5e-16"), ("nano1", "serve", "v5e-1"), ("nano2", "serve", "v5e-1"),
])
def test_every_preset_has_a_plan_covering_its_slice(preset, program, topology):
    assert topology in plans(preset, program)
    cfg = get_config(preset, topology, program)
    mesh = cfg.mesh.resolve(parse_topology(topology).chips)  # the plan's mesh covers the slice exactly
    assert mesh["data"] * mesh["fsdp"] * mesh["tensor"] * mesh["dcn_data"] == parse_topology(topology).chips
    # A row (training) or a slot's cache (serving) holds a clip at the preset's frame budget.
    row = cfg.data.seq_len if program == "train" else cfg.serve.max_cache_len
    assert cfg.tokenizers.video.tokens(cfg.tokenizers.image.tokens_per_image) <= row
