"""What the scale presets share: Gemini-class vocabulary, 32k context, MQA, RoPE, bf16 compute,
splash attention on TPU (model/splash.py; XLA's attention on other platforms)."""

from configs.base import ModelConfig

SCALE_VOCAB = dict(
    text_vocab_size=256_000,  # SentencePiece, Gemini-class
    image_vocab_size=64_000,  # FSQ levels [8, 8, 8, 5, 5, 5]: 256x256 -> 16x16 tokens
    audio_vocab_size=15_360,  # FSQ levels [8, 8, 8, 6, 5]
)


def scale_model(**shape) -> ModelConfig:
    return ModelConfig(
        **SCALE_VOCAB,
        num_kv_heads=1,
        head_dim=256,
        max_seq_len=32_768,
        tie_embeddings=True,
        compute_dtype="bfloat16",
        remat_policy="dots_saveable",
        attention_backend="splash",
        **shape,
    )
