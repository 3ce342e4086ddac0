"""`nano1`: Gemini Nano-1 size (1.8B parameters). Gemini publishes the count, not the shape: this is ours."""

from configs.base import Config, DataConfig, MeshConfig, PodPlan
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


# Checked by compiling for each slice (`python bench/pod_fit.py`; docs/pod-scale.md).
# Training: 16 rows a chip, one at a time (the 335k-id logits of a 2048-token row are 2.7 GB in
# float32), with full remat.
TRAIN_PLANS = {
    "v5e-16": PodPlan(mesh=MeshConfig(data=1, fsdp=16, tensor=1), model=dict(remat_policy="full"),
                      train=dict(grad_accum_steps=16)),
}
# Decoding on one chip: int8 weights (model/weights.py; half of bfloat16's bytes to hold and to read
# each step), 16 slots of 8k tokens.
SERVE_PLANS = {
    "v5e-1": PodPlan(mesh=MeshConfig(data=1, fsdp=1, tensor=1),
                     serve=dict(slots=16, max_cache_len=8192, int8_weights=True)),
}
