"""`nano2`: Gemini Nano-2 size (3.25B parameters). Gemini publishes the count, not the shape: this is ours."""

from configs.base import Config, DataConfig, MeshConfig, PodPlan
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


# Checked by compiling for each slice (`python bench/pod_fit.py`; docs/pod-scale.md).
# Training: as nano1's plan, one row at a time left 3% of HBM free; tensor 2 halves the logits
# (and the heads and ffn) on each chip, and FSDP 8 x micro-batches of one row per FSDP group fit.
TRAIN_PLANS = {
    "v5e-16": PodPlan(mesh=MeshConfig(data=1, fsdp=8, tensor=2), model=dict(remat_policy="full"),
                      train=dict(grad_accum_steps=32)),
}
# Decoding on one chip: int8 weights (model/weights.py; half of bfloat16's bytes to hold and to read
# each step), 16 slots of 8k tokens.
SERVE_PLANS = {
    "v5e-1": PodPlan(mesh=MeshConfig(data=1, fsdp=1, tensor=1),
                     serve=dict(slots=16, max_cache_len=8192, int8_weights=True)),
}
