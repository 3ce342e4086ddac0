"""`pro`: PaLM-62B's published dense shape (Gemini Pro's is unpublished): d 8192, 64 layers, 32 heads x 256, MQA, ffn 32768."""

from configs.base import Config, DataConfig, MeshConfig, PodPlan
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


# Checked by compiling for each slice (`python bench/pod_fit.py`; docs/pod-scale.md).
# Training keeps the preset's tensor 8 (heads 32, ffn 32768 split 8 ways) and FSDP over the rest;
# full remat, and micro-batches of 8 rows per FSDP group on v5p (95 GB a chip), 1 on v5e (16 GiB).
TRAIN_PLANS = {
    "v5p-128": PodPlan(mesh=MeshConfig(data=1, fsdp=8, tensor=8), model=dict(remat_policy="full"),
                       train=dict(grad_accum_steps=16)),
    "v5e-256": PodPlan(mesh=MeshConfig(data=1, fsdp=32, tensor=8), model=dict(remat_policy="full"),
                       train=dict(grad_accum_steps=32)),
    # Two v5e-256 slices over the data-centre network: each slice holds a whole FSDP x tensor copy as
    # above, and only the gradients' all-reduce crosses between them (dcn_data), half the rows each.
    "2x v5e-256": PodPlan(mesh=MeshConfig(dcn_data=2, data=1, fsdp=32, tensor=8), model=dict(remat_policy="full"),
                          train=dict(grad_accum_steps=16)),
}
# Decoding splits the bfloat16 weights 16 ways (7.8 GB a chip); the single kv head cannot split,
# so each chip holds the whole cache: 16 slots of 4k tokens.
SERVE_PLANS = {
    "v5e-16": PodPlan(mesh=MeshConfig(data=1, fsdp=1, tensor=16), serve=dict(slots=16, max_cache_len=4096)),
}
