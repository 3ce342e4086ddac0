"""`tiny`: a few million parameters; trains and serves on a 2-core CPU in minutes."""

from configs.base import Config, DataConfig, MeshConfig, ModelConfig, ServeConfig, SFTConfig, TrainConfig


def config() -> Config:
    return Config(
        name="tiny",
        model=ModelConfig(
            text_vocab_size=1024,
            image_vocab_size=1000,
            audio_vocab_size=1000,
            # Factorised code embeddings (model/layers.py, Embedding): the tokenizers' FSQ levels.
            image_code_levels=(8, 5, 5, 5),
            audio_code_levels=(8, 5, 5, 5),
            d_model=256,
            num_layers=4,
            num_heads=4,
            num_kv_heads=1,
            head_dim=64,
            mlp_dim=1024,
            max_seq_len=512,
            tie_embeddings=True,
            compute_dtype="float32",  # bf16 is no faster than fp32 on a CPU
            remat_policy="none",  # activations of a tiny model fit easily
            scan_unroll=4,  # all four layers: no loop, no stacked per-layer buffers
        ),
        mesh=MeshConfig(data=-1, fsdp=1, tensor=1),
        # Captions (captioning + drawing) weigh most: reading a shape (a small one above all) from
        # its image codes is what the tiny model learns last, in pictures and in clips' frames alike.
        # A clip is ~4x a picture's tokens: at weight 1 it is a third of the tokens. Batch 4: per
        # token, more steps of a smaller batch learn more, down to 4.
        data=DataConfig(seq_len=512, global_batch_size=4, world_mixture=(4.0, 2.0, 1.0, 1.0)),
        # 3,000 steps learned pictures and sounds; clips take a third of the tokens, so 5,000 steps
        # (docs/performance.md has both runs).
        train=TrainConfig(steps=5000, learning_rate=2e-3, warmup_steps=50, checkpoint_every=500, eval_every=1000),
        # Instruction tuning within 6 minutes: a tenth of the world's examples replayed keeps the
        # pre-trained tasks; one eval, at the end (docs/performance.md has the settings tried).
        sft=SFTConfig(steps=420, learning_rate=2e-3, eval_every=420),
        serve=ServeConfig(slots=8, max_cache_len=512),
    )
