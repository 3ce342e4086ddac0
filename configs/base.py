"""Typed configuration: one frozen dataclass per concern, validated at construction.

Presets (one module each beside this file) are small functions that fill these in.
Every field can be overridden from the command line (see configs/cli.py).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal, get_args

from configs.tokenizers import TokenizersConfig

AttentionBackend = Literal["xla", "cudnn", "splash"]  # splash: the Pallas kernel on TPU, xla elsewhere
RematPolicy = Literal["none", "full", "dots_saveable", "dots_with_no_batch_dims_saveable"]
DType = Literal["float32", "bfloat16", "float16"]
ATTENTION_BACKENDS, REMAT_POLICIES, DTYPES = get_args(AttentionBackend), get_args(RematPolicy), get_args(DType)


def _fail(field: str, message: str) -> None:
    raise ValueError(f"config field `{field}`: {message}")


def _check_positive(prefix: str, obj, names: tuple[str, ...]) -> None:
    for name in names:
        if getattr(obj, name) <= 0:
            _fail(f"{prefix}.{name}", f"must be positive, got {getattr(obj, name)}")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The decoder's shape. The vocabulary is text pieces, then image codes, then audio codes."""

    text_vocab_size: int
    image_vocab_size: int
    audio_vocab_size: int
    d_model: int
    num_layers: int
    num_heads: int
    num_kv_heads: int  # 1 = multi-query; num_heads = multi-head; in between = grouped-query
    head_dim: int
    mlp_dim: int
    max_seq_len: int
    tie_embeddings: bool = True
    qk_norm: bool = False
    rope_base: float = 10_000.0
    norm_eps: float = 1e-6
    param_dtype: DType = "float32"
    compute_dtype: DType = "bfloat16"
    remat_policy: RematPolicy = "dots_saveable"
    # Layers per iteration of the layer scan. 1 keeps compile time flat in depth (the scale presets);
    # a shallow model unrolls all of them: the loop and its stacked per-layer buffers took a fifth
    # of the tiny preset's CPU step (README, "Measured").
    scan_unroll: int = 1
    attention_backend: AttentionBackend = "xla"
    # The image and audio tokenizers' FSQ levels, or () for plain rows: given, each code's embedding
    # is its own row plus a learned row per FSQ digit (model/layers.py, Embedding).
    image_code_levels: tuple[int, ...] = ()
    audio_code_levels: tuple[int, ...] = ()

    def __post_init__(self):
        _check_positive("model", self, ("text_vocab_size", "d_model", "num_layers", "num_heads", "num_kv_heads",
                                        "head_dim", "mlp_dim", "max_seq_len", "rope_base", "norm_eps", "scan_unroll"))
        if self.image_vocab_size < 0 or self.audio_vocab_size < 0:
            _fail("model.image_vocab_size", "code ranges cannot be negative")
        if self.num_heads % self.num_kv_heads:
            _fail("model.num_kv_heads", f"{self.num_kv_heads} does not divide model.num_heads={self.num_heads}")
        if self.head_dim % 2:
            _fail("model.head_dim", f"RoPE rotates pairs, so it must be even; got {self.head_dim}")
        if self.attention_backend not in ATTENTION_BACKENDS:
            _fail("model.attention_backend", f"unknown backend {self.attention_backend!r}; choose from {ATTENTION_BACKENDS}")
        if self.remat_policy not in REMAT_POLICIES:
            _fail("model.remat_policy", f"unknown policy {self.remat_policy!r}; choose from {REMAT_POLICIES}")
        for kind in ("image", "audio"):
            levels, size = getattr(self, f"{kind}_code_levels"), getattr(self, f"{kind}_vocab_size")
            if levels and math.prod(levels) != size:
                _fail(f"model.{kind}_code_levels", f"{tuple(levels)} make {math.prod(levels)} codes, not "
                      f"model.{kind}_vocab_size={size}")
        for name in ("param_dtype", "compute_dtype"):
            if getattr(self, name) not in DTYPES:
                _fail(f"model.{name}", f"unknown dtype {getattr(self, name)!r}; choose from {DTYPES}")

    @property
    def vocab_size(self) -> int:
        """All three id ranges, padded to a multiple of 128 so the vocab axis shards evenly."""
        used = self.text_vocab_size + self.image_vocab_size + self.audio_vocab_size
        return -(-used // 128) * 128


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Device mesh. One axis may be -1: it takes whatever devices the others leave."""

    dcn_data: int = 1  # data parallelism across slices (over the data-centre network)
    data: int = 1
    fsdp: int = -1
    tensor: int = 1

    AXES = ("dcn_data", "data", "fsdp", "tensor")

    def __post_init__(self):
        sizes = {axis: getattr(self, axis) for axis in self.AXES}
        for axis, size in sizes.items():
            if size == 0 or size < -1:
                _fail(f"mesh.{axis}", f"must be a positive size or -1, got {size}")
        if sum(size == -1 for size in sizes.values()) > 1:
            _fail("mesh", f"at most one axis may be -1, got {sizes}")

    def resolve(self, num_devices: int) -> dict[str, int]:
        """Axis sizes for `num_devices`; raises naming the fields if they cannot cover them exactly."""
        sizes = {axis: getattr(self, axis) for axis in self.AXES}
        fixed = 1
        for size in sizes.values():
            fixed *= size if size != -1 else 1
        free = [axis for axis, size in sizes.items() if size == -1]
        if free:
            if num_devices % fixed:
                _fail(f"mesh.{free[0]}", f"the other axes {sizes} multiply to {fixed}, which does not divide {num_devices} devices")
            sizes[free[0]] = num_devices // fixed
        elif fixed != num_devices:
            fields = " x ".join(f"mesh.{a}={s}" for a, s in sizes.items())
            _fail("mesh", f"{fields} = {fixed} devices, but {num_devices} are present")
        return sizes


@dataclasses.dataclass(frozen=True)
class DataConfig:
    seq_len: int = 512
    global_batch_size: int = 8
    seed: int = 0
    overlong: Literal["truncate", "drop"] = "truncate"  # an example longer than a row: cut it, or skip it
    packing_bins: int = 16  # rows first-fit packing fills at once (more: denser rows, more latency)
    prefetch: int = 2  # batches a background thread keeps ready (0: none)
    # Mixture weights of the world's caption, audio and document examples. Documents are the longest
    # (two or three pictures and sounds each); at equal weights they take ~60% of the tokens.
    world_mixture: tuple[float, float, float] = (1.0, 1.0, 1.0)
    captioning_share: float = 0.5  # of the world's caption examples, the share templated picture -> text (the rest: drawing)

    def __post_init__(self):
        _check_positive("data", self, ("seq_len", "global_batch_size", "packing_bins"))
        if len(self.world_mixture) != 3 or min(self.world_mixture) <= 0:
            _fail("data.world_mixture", f"needs 3 positive weights (caption, audio, document), got {self.world_mixture}")
        if not 0.0 <= self.captioning_share <= 1.0:
            _fail("data.captioning_share", f"must lie in [0, 1], got {self.captioning_share}")
        if self.overlong not in ("truncate", "drop"):
            _fail("data.overlong", f"must be 'truncate' or 'drop', got {self.overlong!r}")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    steps: int = 1000
    learning_rate: float = 3e-4
    warmup_steps: int = 100
    weight_decay: float = 0.1
    grad_clip_norm: float = 1.0
    grad_accum_steps: int = 1
    z_loss_weight: float = 1e-4  # pulls log Z toward 0, the stability fix early-fusion models needed
    seed: int = 0
    checkpoint_every: int = 200
    keep_checkpoints: int = 3
    eval_every: int = 1000  # steps between held-out evals; the last step is always evaluated
    eval_examples: int = 200  # per eval task

    def __post_init__(self):
        _check_positive("train", self, ("steps", "learning_rate", "grad_clip_norm", "grad_accum_steps",
                                        "checkpoint_every", "keep_checkpoints",
                                        "eval_every", "eval_examples"))
        if self.warmup_steps < 0:
            _fail("train.warmup_steps", f"must be >= 0, got {self.warmup_steps}")
        if self.z_loss_weight < 0:
            _fail("train.z_loss_weight", f"must be >= 0, got {self.z_loss_weight}")


@dataclasses.dataclass(frozen=True)
class ServeConfig:
    slots: int = 8  # concurrent decode slots sharing one KV cache
    max_cache_len: int = 1024  # prompt + reply, per slot
    max_tokens: int = 256  # the most one request may ask to generate
    max_queue: int = 256  # requests waiting for a slot; one more gets 429
    request_timeout_s: float = 120.0
    max_body_bytes: int = 8 * 2**20  # a request body, or a fetched image
    # Weight-only int8 (model/int8.py): half of bfloat16's bytes to hold and to read each step.
    int8_weights: bool = False
    host: str = "127.0.0.1"
    port: int = 8000

    def __post_init__(self):
        _check_positive("serve", self, ("slots", "max_cache_len", "max_tokens", "max_queue", "request_timeout_s",
                                        "max_body_bytes", "port"))


@dataclasses.dataclass(frozen=True)
class PodPlan:
    """How a preset runs on one named TPU slice: its mesh, and the fields that must change to fit
    (remat, micro-batches, slots). Checked by compiling for the slice (parallel/aot.py)."""

    mesh: MeshConfig
    model: dict = dataclasses.field(default_factory=dict)  # ModelConfig fields
    data: dict = dataclasses.field(default_factory=dict)
    train: dict = dataclasses.field(default_factory=dict)
    serve: dict = dataclasses.field(default_factory=dict)

    def apply(self, cfg: "Config") -> "Config":
        return dataclasses.replace(
            cfg, mesh=self.mesh, model=dataclasses.replace(cfg.model, **self.model),
            data=dataclasses.replace(cfg.data, **self.data), train=dataclasses.replace(cfg.train, **self.train),
            serve=dataclasses.replace(cfg.serve, **self.serve))


@dataclasses.dataclass(frozen=True)
class Config:
    name: str
    model: ModelConfig
    mesh: MeshConfig = MeshConfig()
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    serve: ServeConfig = ServeConfig()
    tokenizers: TokenizersConfig = TokenizersConfig()

    def __post_init__(self):
        if self.data.global_batch_size % self.train.grad_accum_steps:
            _fail("train.grad_accum_steps", f"{self.train.grad_accum_steps} does not divide "
                  f"data.global_batch_size={self.data.global_batch_size}")
        for kind in ("image", "audio"):
            codes = getattr(self.tokenizers, kind).codebook_size
            levels = tuple(getattr(self.model, f"{kind}_code_levels"))
            if levels and levels != tuple(getattr(self.tokenizers, kind).levels):
                _fail(f"model.{kind}_code_levels", f"{levels} differ from tokenizers.{kind}.levels="
                      f"{getattr(self.tokenizers, kind).levels}")
            if getattr(self.model, f"{kind}_vocab_size") != codes:
                _fail(f"model.{kind}_vocab_size", f"{getattr(self.model, f'{kind}_vocab_size')} differs from the "
                      f"{codes} codes of tokenizers.{kind}.levels={getattr(self.tokenizers, kind).levels}")
        if self.data.seq_len > self.model.max_seq_len:
            _fail("data.seq_len", f"{self.data.seq_len} exceeds model.max_seq_len={self.model.max_seq_len}")
        if self.serve.max_cache_len > self.model.max_seq_len:
            _fail("serve.max_cache_len", f"{self.serve.max_cache_len} exceeds model.max_seq_len={self.model.max_seq_len}")
