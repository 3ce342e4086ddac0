"""Every preset builds; sizes match their targets and formula; bad configs fail naming the field."""

import dataclasses
import subprocess
import sys

import jax
import pytest

from configs import PRESETS, get_config
from configs.__main__ import table
from configs.base import MeshConfig
from configs.cli import parse
from model.costs import analytic_params, counted_params
from parallel.sharding import make_mesh


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_builds_abstractly_and_counts_its_formula_exactly(preset):
    cfg = get_config(preset)
    assert counted_params(cfg.model) == analytic_params(cfg.model)


@pytest.mark.parametrize("preset, target", [("nano1", 1.8e9), ("nano2", 3.25e9)])
def test_nano_presets_are_gemini_nano_sized_within_3_percent(preset, target):
    assert abs(counted_params(get_config(preset).model) / target - 1) < 0.03


@pytest.mark.parametrize("preset, low, high", [("pro", 60e9, 65e9), ("ultra", 530e9, 550e9), ("tiny", 2e6, 10e6)])
def test_pro_ultra_tiny_sizes_are_in_their_class(preset, low, high):
    assert low < counted_params(get_config(preset).model) < high


def test_vocab_is_padded_to_a_multiple_of_128_and_covers_every_modality():
    for preset in PRESETS:
        m = get_config(preset).model
        assert m.vocab_size % 128 == 0
        assert m.vocab_size >= m.text_vocab_size + m.image_vocab_size + m.audio_vocab_size


@pytest.mark.parametrize(
    "override, field",
    [
        (dict(num_heads=6, num_kv_heads=4), "model.num_kv_heads"),
        (dict(attention_backend="flash9000"), "model.attention_backend"),
        (dict(remat_policy="sometimes"), "model.remat_policy"),
        (dict(compute_dtype="float8"), "model.compute_dtype"),
        (dict(head_dim=15), "model.head_dim"),
        (dict(num_layers=0), "model.num_layers"),
    ],
)
def test_bad_model_config_fails_at_construction_naming_the_field(override, field):
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        dataclasses.replace(get_config("tiny").model, **override)


def test_unknown_preset_is_named():
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        get_config("huge")


def test_mesh_whose_product_differs_from_the_device_count_is_refused_naming_the_axes():
    with pytest.raises(ValueError, match=r"mesh\.data=2 x mesh\.fsdp=2 x mesh\.tensor=2 = 8 devices, but 4"):
        MeshConfig(data=2, fsdp=2, tensor=2).resolve(4)
    with pytest.raises(ValueError, match=r"mesh\.fsdp"):
        MeshConfig(data=3, fsdp=-1).resolve(8)
    with pytest.raises(ValueError, match="at most one axis may be -1"):
        MeshConfig(data=-1, fsdp=-1)
    with pytest.raises(ValueError, match=r"but 1 are present"):
        make_mesh(MeshConfig(data=2, fsdp=1, tensor=1), jax.devices()[:1])


def test_minus_one_takes_the_devices_the_other_axes_leave():
    assert MeshConfig(data=2, fsdp=-1, tensor=2).resolve(16) == {"dcn_data": 1, "data": 2, "fsdp": 4, "tensor": 2}


def test_sequence_longer_than_the_model_context_is_refused():
    with pytest.raises(ValueError, match=r"data\.seq_len"):
        dataclasses.replace(get_config("tiny"), data=dataclasses.replace(get_config("tiny").data, seq_len=100_000))


def test_command_line_overrides_any_field_of_the_chosen_preset():
    cfg, _ = parse(["--config", "nano1", "--model.num-layers", "3", "--mesh.tensor", "2", "--train.learning-rate", "0.01",
                 "--model.no-tie-embeddings"])
    assert cfg.name == "nano1" and cfg.model.num_layers == 3 and cfg.model.d_model == 2048
    assert cfg.mesh.tensor == 2 and cfg.train.learning_rate == 0.01 and not cfg.model.tie_embeddings


def test_command_line_refuses_unknown_preset_and_invalid_override():
    run = lambda *args: subprocess.run([sys.executable, "-c", "from configs.cli import parse; parse()", *args],
                                       capture_output=True, text=True)
    bad_preset = run("--config", "huge")
    assert bad_preset.returncode != 0 and "unknown preset 'huge'" in bad_preset.stderr
    bad_heads = run("--config", "tiny", "--model.num-kv-heads", "3")
    assert bad_heads.returncode != 0 and "model.num_kv_heads" in bad_heads.stderr


def test_python_m_configs_prints_a_row_per_preset_with_counted_and_formula_params():
    text = table()
    for preset in PRESETS:
        row = next(line for line in text.splitlines() if line.startswith(f"| {preset} |"))
        assert "| exact |" in row and f"{counted_params(get_config(preset).model):,}" in row


def test_a_script_declares_its_own_flags_beside_the_config():
    cfg, flags = parse(["--workdir", "/tmp/x", "--config", "tiny", "--model.num-layers", "2"],
                       flags={"--workdir": dict(default="runs/tiny", help="where everything goes")})
    assert flags.workdir == "/tmp/x" and cfg.model.num_layers == 2
