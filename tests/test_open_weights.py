"""Hugging Face Llama and Gemma checkpoints: imported logits and generations equal transformers',
export loads in transformers as it is, the round trip is bit-exact, and a wrong checkpoint is named."""

import dataclasses
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import sentencepiece as spm
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from checkpoints import restore_params
from configs.base import MeshConfig
from data.vocab import Vocabulary
from data.world_builder import build_world
from model.transformer import forward, init_model
from open_weights.architecture import UnsupportedCheckpoint, hf_config, model_config
from open_weights.load import (
    import_model,
    imported_config,
    own_ids,
    run_config,
    text_model,
    text_tokenizer,
)
from open_weights.export import write_checkpoint
from open_weights.tensors import export_tensors, save_tensors
from parallel.sharding import make_mesh
from serving.engine import Engine, SamplingParams
from serving.offline import generate
from serving.server import make_server
from tests.conftest import BlockColourCodec, FrameLevelCodec
from tests.helpers import WORLD_MODEL, small_model_config
from tests.hf_models import VOCAB, float32_config, import_on_one_device, save_hf_model, save_llama3_tokenizer
from tests.serving_helpers import SERVE_CFG, serving_live
from tests.test_lm_stage import small_config
from training.lm_stage import train_lm

FAMILIES = ["llama", "gemma"]  # grouped-query attention and an untied head; multi-query, GeGLU, 1 + w, scaled embeddings
# Two prompts of different lengths in one batch, the shorter padded (segment 0 / attention mask 0).
TOKENS = np.array([[5, 17, 99, 250, 3, 8, 2, 1, 40, 41], [7, 7, 9, 11, 299, 0, 0, 0, 0, 0]])
MASK = np.array([[1] * 10, [1] * 5 + [0] * 5])


@pytest.fixture(scope="module", params=FAMILIES)
def hf(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    return request.param, folder, save_hf_model(request.param, folder)


def hf_logits(model, tokens=TOKENS, mask=MASK) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor(tokens), attention_mask=torch.tensor(mask)).logits.numpy()


def our_logits(graphdef, params, tokens=TOKENS, mask=MASK) -> np.ndarray:
    logits, _ = forward(graphdef, params, jnp.asarray(tokens), None, jnp.asarray(mask))
    return np.asarray(logits)


def test_the_families_map_onto_the_models_options(hf):
    family, folder, _ = hf
    cfg = float32_config(folder)
    expected = {"llama": ("silu", False, False, False, 2), "gemma": ("gelu_tanh", True, True, True, 1)}[family]
    assert (cfg.mlp_activation, cfg.norm_offset, cfg.embed_scale, cfg.tie_embeddings, cfg.num_kv_heads) == expected
    assert cfg.rope_base == {"llama": 500_000.0, "gemma": 10_000.0}[family]


def test_llama_3_1s_scaled_rope_imports_with_the_same_logits(tmp_path):
    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 16}  # a short original context: every band is exercised
    model = save_hf_model("llama", tmp_path, rope_scaling=scaling)
    cfg = float32_config(tmp_path)
    assert cfg.rope_scaling == (8.0, 1.0, 4.0, 16.0)
    graphdef, params = import_on_one_device(tmp_path, cfg)
    assert np.abs(our_logits(graphdef, params)[..., :VOCAB] - hf_logits(model))[MASK.astype(bool)].max() < 1e-4
    unscaled = import_on_one_device(tmp_path, dataclasses.replace(cfg, rope_scaling=()))
    assert np.abs(our_logits(*unscaled)[..., :VOCAB] - hf_logits(model))[MASK.astype(bool)].max() > 1e-3  # it matters
    save_tensors(export_tensors(cfg, graphdef, params), tmp_path / "export")  # and the export keeps the scaling
    (tmp_path / "export" / "config.json").write_text(json.dumps(hf_config(cfg, {"bos": 1, "eos": 2, "pad": 0})))
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "export").eval()
    assert np.abs(hf_logits(loaded)[..., :VOCAB] - hf_logits(model))[MASK.astype(bool)].max() < 1e-5


def test_imported_logits_equal_the_hf_models_on_ragged_prompts(hf):
    family, folder, model = hf
    graphdef, params = import_on_one_device(folder, float32_config(folder))
    ours, theirs = our_logits(graphdef, params)[..., :VOCAB], hf_logits(model)
    real = MASK.astype(bool)
    assert np.abs(ours - theirs)[real].max() < 1e-4
    assert np.abs(theirs).max() > 0.1  # logits of some size: the comparison is not of zeros


@pytest.mark.slow  # compiles the engine
def test_greedy_generation_through_our_engine_equals_hf_generate(hf):
    family, folder, model = hf
    cfg = float32_config(folder)
    graphdef, params = import_on_one_device(folder, cfg)
    mesh = make_mesh(MeshConfig(data=1, fsdp=1, tensor=1))
    eos = model.config.eos_token_id
    engine = Engine(cfg, graphdef, params, mesh, slots=4, cache_len=64, eos_id=eos, real_vocab=VOCAB)
    prompts = [np.array([1, 5, 17, 99]), np.array([1, 250, 3, 8, 2, 40, 41, 60, 61]), np.array([1, 7])]
    ours = generate(engine, prompts, SamplingParams(max_tokens=12))
    for prompt, said in zip(prompts, ours):
        with torch.no_grad():
            out = model.generate(torch.tensor(prompt[None]), max_new_tokens=12, do_sample=False, eos_token_id=eos,
                                 pad_token_id=0)
        assert said.tolist() == out[0, len(prompt):].tolist()


def test_export_loads_in_transformers_as_it_is_and_gives_the_same_logits(hf, tmp_path):
    family, folder, model = hf
    text = text_tokenizer(folder)  # extended: <pad> and our symbols after the checkpoint's 300 ids
    cfg = imported_config(folder, float32_config(folder), text.size, modalities=False)
    graphdef, params = import_model(folder, cfg, make_mesh(MeshConfig(data=1, fsdp=1, tensor=1)))
    assert write_checkpoint(cfg, graphdef, params, text, tmp_path) == family
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(loaded).__name__ == type(model).__name__
    assert loaded.config.vocab_size == cfg.vocab_size == 384  # padded to a multiple of 128
    assert np.abs(hf_logits(loaded)[..., :VOCAB] - hf_logits(model))[MASK.astype(bool)].max() < 1e-5
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    assert len(tokenizer) == text.size and tokenizer.convert_ids_to_tokens(text.ids["<boi>"]) == "<boi>"


def test_import_export_import_is_bit_exact(hf, tmp_path):
    family, folder, _ = hf
    cfg = float32_config(folder)
    graphdef, params = import_on_one_device(folder, cfg)
    save_tensors(export_tensors(cfg, graphdef, params), tmp_path / "again", shard_bytes=100_000)  # several shards
    shutil.copy(folder / "config.json", tmp_path / "again" / "config.json")
    assert (tmp_path / "again" / "model.safetensors.index.json").is_file()
    _, again = import_on_one_device(tmp_path / "again", cfg)
    first, second = _flat(params), _flat(again)
    assert first.keys() == second.keys() and all(np.array_equal(first[k], second[k]) for k in first)


def _flat(params) -> dict[str, np.ndarray]:
    return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]}


@pytest.mark.slow  # transformers converts the tokenizer
def test_a_run_exports_as_llama_with_its_digit_rows_folded_in_and_a_tokenizer_that_knows_every_id(vocab, tmp_path):
    cfg = dataclasses.replace(WORLD_MODEL, image_code_levels=(8, 5, 5, 5), audio_code_levels=(8, 5, 5, 5))
    mesh = make_mesh(MeshConfig(data=1, fsdp=1, tensor=1))
    graphdef, params = init_model(cfg, mesh, seed=3)
    assert write_checkpoint(cfg, graphdef, params, vocab.text, tmp_path) == "llama"
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    image, audio = cfg.text_vocab_size + 3, cfg.text_vocab_size + cfg.image_vocab_size + 7
    tokens = np.array([[1, 5, image, audio, 9]])
    mask = np.ones_like(tokens)
    assert np.abs(hf_logits(loaded, tokens, mask) - our_logits(graphdef, params, tokens, mask)).max() < 1e-4
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    sentence = "a small red circle in the top left"
    assert tokenizer.encode(sentence) == [vocab.ids["<bos>"], *vocab.text.encode(sentence)]
    assert tokenizer.convert_ids_to_tokens([vocab.ids["<boi>"], image, audio, vocab.real_size - 1]) == [
        "<boi>", "<image_3>", "<audio_7>", "<audio_999>"]
    assert len(tokenizer) == vocab.real_size  # every id but the table's padding


def test_a_tensor_of_another_shape_or_a_missing_one_is_named(hf, tmp_path):
    family, folder, _ = hf
    cfg = float32_config(folder)
    with pytest.raises(UnsupportedCheckpoint, match=r"tensor model\.layers\.0\.self_attn\.[qo]_proj\.weight has shape \(64, 64\), the model expects"):
        import_on_one_device(folder, dataclasses.replace(cfg, num_heads=8, head_dim=16))
    with pytest.raises(UnsupportedCheckpoint, match=r"has no tensor 'model\.layers\.2\.[a-z_.]+\.weight'"):
        import_on_one_device(folder, dataclasses.replace(cfg, num_layers=3))


@pytest.mark.parametrize("change, named", [
    ({"model_type": "gemma2"}, "model_type 'gemma2'"),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 8.0}}, "rope_scaling: RoPE type 'yarn'"),
    ({"attention_bias": True}, "attention_bias"),
    ({"hidden_act": "relu"}, "hidden_act 'relu'"),
])
def test_an_architecture_the_model_cannot_hold_is_refused_naming_the_field(hf, change, named):
    _, folder, _ = hf
    config = {**json.loads((folder / "config.json").read_text()), **change}
    config.pop("hidden_activation", None)
    with pytest.raises(UnsupportedCheckpoint, match=named.replace("(", r"\(")):
        model_config(config)


def test_an_extended_vocabulary_keeps_the_checkpoints_ids_and_its_text_logits(hf):
    family, folder, _ = hf
    original = spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
    text = text_tokenizer(folder)
    sentence = "a small red circle in the top left tones 3 A"
    assert text.encode(sentence) == original.encode(sentence)
    assert (text.ids["<bos>"], text.ids["<eos>"]) == (original.bos_id(), original.eos_id())  # Llama's <s>, </s>
    assert sorted(text.ids.values())[-9:] == list(range(VOCAB, VOCAB + 9))  # <pad> and our 8 symbols, after its ids
    run = small_model_config(image_vocab_size=30, audio_vocab_size=20, image_code_levels=(5, 6), audio_code_levels=(4, 5))
    cfg = imported_config(folder, run, text.size, modalities=True)
    assert (cfg.text_vocab_size, cfg.image_vocab_size, cfg.audio_vocab_size, cfg.vocab_size) == (VOCAB + 9, 30, 20, 384)
    graphdef, params = import_model(folder, cfg, make_mesh(MeshConfig(data=1, fsdp=1, tensor=1)))
    plain_graphdef, plain = import_on_one_device(folder, float32_config(folder))
    extended, before = our_logits(graphdef, params), our_logits(plain_graphdef, plain)
    assert np.abs(extended[..., :VOCAB] - before[..., :VOCAB])[MASK.astype(bool)].max() < 1e-5
    table = np.asarray(params["embedding"]["table_vd"][...])
    new = table[VOCAB:VOCAB + 57]  # our symbols, then the image and audio codes: mean + noise of the old rows
    assert np.abs(new.mean(0) - table[:VOCAB].mean(0)).max() < 3 * table[:VOCAB].std(0).max() / np.sqrt(57)
    assert len({row.tobytes() for row in new}) == len(new)  # distinct: the codes can be told apart


def test_a_llama_3_tokenizer_json_is_extended_keeping_its_ids_and_text_never_encodes_to_a_special(tmp_path):
    save_llama3_tokenizer(tmp_path)
    text = text_tokenizer(tmp_path)
    theirs = AutoTokenizer.from_pretrained(tmp_path)
    sentence = "a small red circle in the top left, tones 3 A"
    assert text.encode(sentence) == theirs.encode(sentence, add_special_tokens=False)
    assert text.decode(text.encode(sentence)) == sentence
    assert (text.ids["<bos>"], text.ids["<eos>"]) == (VOCAB - 2, VOCAB - 1)
    assert sorted(text.ids.values())[-9:] == list(range(VOCAB, VOCAB + 9))  # <pad> and our 8 symbols, after its ids
    assert VOCAB - 1 not in text.encode("typed <|end_of_text|>") and text.ids["<boi>"] not in text.encode("<boi>")


def test_a_run_from_a_llama_3_checkpoint_exports_a_tokenizer_json_that_knows_every_id(tmp_path):
    folder = tmp_path / "llama"
    save_hf_model("llama", folder, bos_token_id=VOCAB - 2, eos_token_id=VOCAB - 1)
    save_llama3_tokenizer(folder)
    (folder / "tokenizer.model").unlink()
    text = text_tokenizer(folder)
    run = small_model_config(image_vocab_size=30, audio_vocab_size=20)
    cfg = imported_config(folder, run, text.size, modalities=True)
    graphdef, params = import_model(folder, cfg, make_mesh(MeshConfig(data=1, fsdp=1, tensor=1)))
    write_checkpoint(cfg, graphdef, params, text, tmp_path / "export")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "export")
    assert tokenizer.encode("a red circle", add_special_tokens=False) == text.encode("a red circle")
    image = cfg.text_vocab_size + 4
    assert tokenizer.convert_ids_to_tokens([text.ids["<boi>"], image, image + 30]) == ["<boi>", "<image_4>", "<audio_4>"]
    assert tokenizer.bos_token_id == VOCAB - 2 and tokenizer.eos_token_id == VOCAB - 1


@pytest.mark.slow  # compiles a server
def test_serve_py_serves_an_imported_llama_3_checkpoint_with_hf_generates_greedy_text(tmp_path):
    folder = tmp_path / "llama"
    model = save_hf_model("llama", folder, bos_token_id=VOCAB - 2, eos_token_id=VOCAB - 1)
    (folder / "tokenizer.model").unlink()
    save_llama3_tokenizer(folder)
    cfg = dataclasses.replace(SERVE_CFG, model=dataclasses.replace(SERVE_CFG.model, compute_dtype="float32"))
    mesh = make_mesh(cfg.mesh)
    cfg, vocab, graphdef, params = text_model(folder, cfg, mesh)
    server = make_server(cfg, vocab, graphdef, params, mesh, tuned=("imported", 0), model_name=folder.name,
                         is_token=own_ids(folder, vocab))  # as serve.py serves an import
    prompt = "a small red circle in the"
    with serving_live(server) as live:
        status, _, reply = live.post("/v1/completions", {"prompt": prompt, "max_tokens": 8, "temperature": 0})
        assert status == 200, reply
        _, _, models = live.call("GET", "/v1/models")
    ids = [vocab.ids["<bos>"], *vocab.text.encode(prompt)]
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False, eos_token_id=vocab.ids["<eos>"],
                             pad_token_id=0)
    assert reply["choices"][0]["text"] == vocab.text.decode(out[0, len(ids):].tolist())
    assert models["data"][0]["id"] == folder.name and models["data"][0]["stage"] == "imported"


@pytest.mark.slow  # trains
def test_the_lm_stage_continues_multimodally_from_an_imported_checkpoint(tmp_path):
    folder = tmp_path / "llama"
    save_hf_model("llama", folder)
    base = small_config()
    cfg = run_config(dataclasses.replace(
        base, model=dataclasses.replace(base.model, compute_dtype="float32"),
        train=dataclasses.replace(base.train, init_from=f"hf:{folder}", steps=2, eval_every=2, learning_rate=1e-6)))
    assert (cfg.model.d_model, cfg.model.num_kv_heads, cfg.model.tie_embeddings) == (64, 2, False)  # the checkpoint's
    assert (cfg.model.image_vocab_size, cfg.model.audio_vocab_size) == (base.model.image_vocab_size, base.model.audio_vocab_size)
    vocab = Vocabulary(text_tokenizer(folder), cfg.model, image=BlockColourCodec(), audio=FrameLevelCodec())
    splits = build_world(str(tmp_path / "world"), seed=2, train=40, validation=8, compositional=6).as_data_source()
    logs = []
    last = train_lm(cfg, tmp_path / "run", vocab, splits, log=logs.append)
    assert last["step"] == 2 and np.isfinite(last["loss"])
    assert any(line.startswith(f"LM starts from the llama checkpoint {folder}") for line in logs)
    # Serving or exporting the run needs no flag: its checkpoint says where it started.
    plain = dataclasses.replace(base, model=dataclasses.replace(base.model, compute_dtype="float32"))
    assert run_config(plain, tmp_path / "run").model == cfg.model
    mesh = make_mesh(cfg.mesh)
    _, trained, _ = restore_params(cfg, tmp_path / "run", mesh)
    _, imported = import_model(folder, cfg.model, mesh)
    # Two steps at a learning rate of 1e-6 move no weight by more than a few 1e-6: the run began at the import.
    moved = max(np.abs(a - b).max() for a, b in zip(_flat(trained).values(), _flat(imported).values()))
    assert moved < 1e-4
