"""`ultra`: PaLM-540B's published dense shape (Gemini Ultra's is unpublished): d 18432, 118 layers, 48 heads x 256, MQA, ffn 73728."""

from configs.base import Config, DataConfig, MeshConfig, PodPlan
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


# Checked by compiling for each slice (`python bench/pod_fit.py`; docs/pod-scale.md).
# Training: tensor 16 (48 heads, ffn 73728), FSDP 32, full remat, 2 rows a micro-batch per FSDP group.
TRAIN_PLANS = {
    "v5p-1024": PodPlan(mesh=MeshConfig(data=1, fsdp=32, tensor=16), model=dict(remat_policy="full"),
                        train=dict(grad_accum_steps=32)),
}
# Decoding: the bfloat16 weights split 16 ways (68 GB a chip; 48 heads do not split 32 ways), two
# replicas each serving half the slots.
SERVE_PLANS = {
    "v5p-64": PodPlan(mesh=MeshConfig(data=2, fsdp=1, tensor=16), serve=dict(slots=32, max_cache_len=2048)),
}
