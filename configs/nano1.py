"""`nano1`: Gemini Nano-1 size (1.8B parameters). Gemini publishes the count, not the shape: this is ours."""

from configs.base import Config, DataConfig, MeshConfig
from configs.scale import scale_model
from configs.tokenizers import TokenizersConfig


def config() -> Config:
    return Config(
        name="nano1",
        model=scale_model(d_model=2048, num_layers=18, num_heads=8, mlp_dim=8704),
        mesh=MeshConfig(data=1, fsdp=-1, tensor=1),
        tokenizers=TokenizersConfig.for_scale(),
        data=DataConfig(seq_len=2048, global_batch_size=256),
    )
