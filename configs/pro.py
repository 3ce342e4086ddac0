"""`pro`: PaLM-62B's published dense shape (Gemini Pro's is unpublished): d 8192, 64 layers, 32 heads x 256, MQA, ffn 32768."""

from configs.base import Config, DataConfig, MeshConfig
from configs.scale import scale_model
from configs.tokenizers import TokenizersConfig


def config() -> Config:
    return Config(
        name="pro",
        model=scale_model(d_model=8192, num_layers=64, num_heads=32, mlp_dim=32_768),
        mesh=MeshConfig(data=1, fsdp=-1, tensor=8),
        tokenizers=TokenizersConfig.for_scale(),
        data=DataConfig(seq_len=2048, global_batch_size=1024),
    )
