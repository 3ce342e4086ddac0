"""A Hugging Face `config.json` of the Llama or Gemma family as a ModelConfig, and back.

Each family is the decoder here with some of the model's options set (configs/base.py):

    llama   (Llama 2 and 3, and what shares their layout): SwiGLU, w-scaled RMSNorm, an untied
            head unless `tie_word_embeddings`, grouped-query attention, RoPE at its `rope_theta`
    gemma   (Gemma 1): GeGLU (tanh-approximated GELU), RMSNorm scaled by 1 + w, embeddings scaled
            by sqrt(d_model), a tied head, multi-query or grouped attention

What neither layout holds (Gemma 2's logit soft-capping and local/global alternation, RoPE scaling
other than Llama 3.1's, projection biases) is refused, naming the field, rather than imported into a different model.
"""

from __future__ import annotations

from configs.base import ModelConfig

FAMILIES = {"llama": "LlamaForCausalLM", "gemma": "GemmaForCausalLM"}
# What each family fixes among the model's options.
FAMILY_OPTIONS = {"llama": {"mlp_activation": "silu", "norm_offset": False, "embed_scale": False},
                  "gemma": {"mlp_activation": "gelu_tanh", "norm_offset": True, "embed_scale": True}}
ACTIVATIONS = {"silu": "silu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_tanh": "gelu_tanh"}
DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


class UnsupportedCheckpoint(ValueError):
    """A checkpoint this project cannot load as it is: its message names the field or tensor."""


def _rope(hf: dict) -> tuple[float, tuple[float, ...]]:
    """RoPE's base and scaling (model.rope_scaling), where transformers 4 (`rope_theta`,
    `rope_scaling`) or 5 (`rope_parameters`) keep them: unscaled, or Llama 3.1's "llama3" type."""
    kind_of = lambda spec: spec.get("rope_type") or spec.get("type") or "default"  # noqa: E731
    scaling, parameters = hf.get("rope_scaling") or {}, hf.get("rope_parameters") or {}
    rope = {**parameters, **scaling} if kind_of(scaling) != "default" else {**scaling, **parameters}
    kind = kind_of(rope)
    theta = float(rope.get("rope_theta", hf.get("rope_theta", 10_000.0)))
    if kind == "default":
        return theta, ()
    if kind == "llama3":
        return theta, (float(rope["factor"]), float(rope["low_freq_factor"]), float(rope["high_freq_factor"]),
                       float(rope["original_max_position_embeddings"]))
    raise UnsupportedCheckpoint(f"config.json rope_scaling: RoPE type {kind!r} is not supported (unscaled RoPE "
                                "and Llama 3.1's 'llama3' are)")


def model_config(hf: dict, **overrides) -> ModelConfig:
    """The ModelConfig of a Hugging Face config.json's contents, text ids only; `overrides` sets the
    fields a checkpoint does not fix (dtypes, remat, the image and audio ranges)."""
    family = hf.get("model_type")
    if family not in FAMILIES:
        raise UnsupportedCheckpoint(f"config.json model_type {family!r}: this importer reads "
                                    f"{', '.join(FAMILIES)} (Gemma 2's soft-capping and local attention are not built)")
    for field in ("attention_bias", "mlp_bias"):
        if hf.get(field):
            raise UnsupportedCheckpoint(f"config.json {field}: projections with biases are not supported")
    if hf.get("use_bidirectional_attention"):
        raise UnsupportedCheckpoint("config.json use_bidirectional_attention: the model is causal")
    activation = hf.get("hidden_activation") or hf.get("hidden_act") or "silu"
    if family == "gemma" and activation == "gelu":
        activation = "gelu_pytorch_tanh"  # Gemma 1's first configs said "gelu"; it always ran the tanh form
    if activation not in ACTIVATIONS:
        raise UnsupportedCheckpoint(f"config.json hidden_act {activation!r}: supported are {', '.join(ACTIVATIONS)}")
    heads = int(hf["num_attention_heads"])
    fields = dict(
        text_vocab_size=int(hf["vocab_size"]), image_vocab_size=0, audio_vocab_size=0,
        d_model=int(hf["hidden_size"]), num_layers=int(hf["num_hidden_layers"]), num_heads=heads,
        num_kv_heads=int(hf.get("num_key_value_heads") or heads),
        head_dim=int(hf.get("head_dim") or int(hf["hidden_size"]) // heads),
        mlp_dim=int(hf["intermediate_size"]), max_seq_len=int(hf.get("max_position_embeddings", 8192)),
        tie_embeddings=bool(hf.get("tie_word_embeddings", family == "gemma")),
        rope_base=_rope(hf)[0], rope_scaling=_rope(hf)[1], norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        param_dtype=DTYPES.get(str(hf.get("dtype") or hf.get("torch_dtype")), "float32"),
        compute_dtype="bfloat16", remat_policy="dots_saveable",
        **{**FAMILY_OPTIONS[family], "mlp_activation": ACTIVATIONS[activation]},
    )
    return ModelConfig(**{**fields, **overrides})


def family_of(cfg: ModelConfig) -> str:
    """The family whose layout `cfg` is: every option the family fixes must match; else a refusal
    naming the options that keep it from either."""
    if cfg.qk_norm:
        raise UnsupportedCheckpoint("model.qk_norm: neither Llama nor Gemma normalises queries and keys")
    mismatches = {}
    for family, options in FAMILY_OPTIONS.items():
        mismatches[family] = [f"model.{name}={getattr(cfg, name)!r} (the family has {value!r})"
                              for name, value in options.items() if getattr(cfg, name) != value]
        if not mismatches[family]:
            return family
    raise UnsupportedCheckpoint("the model matches no exported family: " + "; ".join(
        f"{family}: {', '.join(found)}" for family, found in mismatches.items()))


def hf_config(cfg: ModelConfig, ids: dict[str, int]) -> dict:
    """The config.json of `cfg` in its family's layout; `ids` gives bos, eos and pad token ids."""
    family = family_of(cfg)
    return {
        "architectures": [FAMILIES[family]], "model_type": family, "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model, "intermediate_size": cfg.mlp_dim, "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads, "num_key_value_heads": cfg.num_kv_heads, "head_dim": cfg.head_dim,
        ("hidden_activation" if family == "gemma" else "hidden_act"):
            {"silu": "silu", "gelu_tanh": "gelu_pytorch_tanh"}[cfg.mlp_activation],
        "max_position_embeddings": cfg.max_seq_len, "rms_norm_eps": cfg.norm_eps, "rope_theta": cfg.rope_base,
        **({"rope_scaling": dict(zip(("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
                                     cfg.rope_scaling), rope_type="llama3")} if cfg.rope_scaling else {}),
        "tie_word_embeddings": cfg.tie_embeddings, "attention_bias": False, "dtype": cfg.param_dtype,
        "bos_token_id": ids["bos"], "eos_token_id": ids["eos"], "pad_token_id": ids["pad"],
    }
