"""`nano2`: Gemini Nano-2 size (3.25B parameters). Gemini publishes the count, not the shape: this is ours."""

from configs.base import Config, DataConfig, MeshConfig
from configs.scale import scale_model
from configs.tokenizers import TokenizersConfig


def config() -> Config:
    return Config(
        name="nano2",
        model=scale_model(d_model=2560, num_layers=26, num_heads=10, mlp_dim=10240),
        mesh=MeshConfig(data=1, fsdp=-1, tensor=1),
        tokenizers=TokenizersConfig.for_scale(),
        data=DataConfig(seq_len=2048, global_batch_size=256),
    )
