"""Every preset builds; sizes match their targets and formula; bad configs fail naming the field."""

import dataclasses
import re
import subprocess
import sys
import warnings

import jax
import pytest
import tyro

from configs import PRESETS, get_config
from configs.__main__ import table
from configs.base import MeshConfig
from configs.cli import parse, tyro_spec
from model.costs import analytic_params, counted_params
from parallel.sharding import make_mesh
from serve import ServeFlags
from train import TrainFlags


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


def test_command_line_refuses_unknown_preset_and_invalid_override(capsys):
    with pytest.raises(SystemExit) as exit:
        parse(["--config", "huge", "--workdir", "x"], prog="train.py", flags=TrainFlags)
    assert exit.value.code == 2
    assert "--config: unknown preset 'huge'; choose from tiny, nano1, nano2, pro, ultra" in capsys.readouterr().err
    bad_heads = subprocess.run([sys.executable, "-c", "from configs.cli import parse; parse()", "--config", "tiny",
                                "--model.num-kv-heads", "3"], capture_output=True, text=True)
    assert bad_heads.returncode != 0 and "model.num_kv_heads" in bad_heads.stderr


def test_python_m_configs_prints_a_row_per_preset_with_counted_and_formula_params():
    text = table()
    for preset in PRESETS:
        row = next(line for line in text.splitlines() if line.startswith(f"| {preset} |"))
        assert "| exact |" in row and f"{counted_params(get_config(preset).model):,}" in row


def test_script_flags_and_config_overrides_parse_in_one_call():
    cfg, flags = parse(["--workdir", "/tmp/x", "--stage", "lm", "--config", "nano1", "--model.num-layers", "3",
                        "--train.steps=300", "--coordinator", "localhost:1234", "--num-processes", "2",
                        "--process-id", "0"], prog="train.py", flags=TrainFlags, program="train")
    assert flags == TrainFlags(workdir="/tmp/x", stage="lm", coordinator="localhost:1234", num_processes=2, process_id=0)
    assert cfg.name == "nano1" and cfg.model.num_layers == 3 and cfg.train.steps == 300
    assert parse([], flags=TrainFlags)[1] == TrainFlags()  # every script flag has a default
    with pytest.raises(SystemExit):
        parse(["--stage", "everything"], flags=TrainFlags)


def test_topology_picks_the_presets_plan_for_that_program_under_the_overrides():
    cfg, flags = parse(["--config", "nano1", "--compile-only", "--topology", "v5e-16", "--train.grad-accum-steps", "4"],
                       flags=TrainFlags, program="train")
    assert flags.compile_only and flags.topology == "v5e-16"
    assert cfg.mesh.fsdp == 16 and cfg.model.remat_policy == "full" and cfg.train.grad_accum_steps == 4
    cfg, flags = parse(["--config", "nano1", "--topology", "v5e-1"], flags=ServeFlags, program="serve")
    assert cfg.serve.int8_weights and cfg.serve.slots == 16 and not flags.compile_only


def test_serve_flags_repeat_image_hosts_and_take_the_api_key_from_the_environment(monkeypatch, capsys):
    monkeypatch.setenv("SERVE_API_KEY", "from-env-secret")
    _, flags = parse(["--config", "tiny", "--random-init"], flags=ServeFlags, program="serve")
    assert flags.random_init and flags.api_key == "from-env-secret" and flags.allow_image_host == ()
    _, flags = parse(["--workdir", "runs/tiny", "--api-key", "K", "--allow-image-host", "a.com",
                      "--allow-image-host", "b.com"], flags=ServeFlags, program="serve")
    assert flags.api_key == "K" and flags.allow_image_host == ("a.com", "b.com") and flags.workdir == "runs/tiny"
    with pytest.raises(SystemExit) as exit:
        parse(["--help"], prog="serve.py", flags=ServeFlags, program="serve")
    assert exit.value.code == 0
    text = capsys.readouterr().out
    assert "--allow-image-host" in text and "--serve.port" in text and "$SERVE_API_KEY" in text
    assert "from-env-secret" not in text  # --help names the variable, never its value


def flag_help(preset: str, program: str) -> dict[str, str]:
    """Every flag of `python {program}.py --config {preset}` -> its help text, tyro's hint stripped."""
    flags = {"train": TrainFlags, "serve": ServeFlags}[program]
    with warnings.catch_warnings():  # get_parser: tyro's argparse view of the same command line, deprecated
        warnings.simplefilter("ignore", DeprecationWarning)
        parser = tyro.extras.get_parser(**tyro_spec(["--config", preset], f"{program}.py", flags, program))
    return {action.option_strings[0]: re.sub(r"\s*\((default: .*|repeatable|required|optional)\)$", "",
                                              action.help or "", flags=re.DOTALL).strip()
            for action in parser._actions if action.option_strings and action.dest != "help"}


@pytest.mark.parametrize("program", ["train", "serve"])
@pytest.mark.parametrize("preset", PRESETS)
def test_every_flag_has_its_own_help_text(preset, program):
    helps = flag_help(preset, program)
    assert {"--config", "--workdir", "--topology", "--model.num-layers", "--serve.host", "--serve.port",
            "--tokenizers.audio.levels"} <= set(helps)
    flags_by_text: dict[str, list[str]] = {}
    for flag, text in helps.items():
        flags_by_text.setdefault(text, []).append(flag)
    assert not {text: flags for text, flags in flags_by_text.items() if text and len(flags) > 1}, "help shared by fields"
    assert not [flag for flag, text in helps.items() if not text], "flags without help"
    assert all("\n" not in text for text in helps.values()), "a help docstring over two lines keeps its break"
