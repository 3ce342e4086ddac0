"""`ultra`: PaLM-540B's published dense shape (Gemini Ultra's is unpublished): d 18432, 118 layers, 48 heads x 256, MQA, ffn 73728."""

from configs.base import Config, DataConfig, MeshConfig
from configs.scale import scale_model
from configs.tokenizers import TokenizersConfig


def config() -> Config:
    return Config(
        name="ultra",
        model=scale_model(d_model=18_432, num_layers=118, num_heads=48, mlp_dim=73_728),
        mesh=MeshConfig(data=1, fsdp=-1, tensor=16),
        tokenizers=TokenizersConfig.for_scale(),
        data=DataConfig(seq_len=2048, global_batch_size=2048),
    )
