"""Typed configuration: one frozen dataclass per concern, validated at construction.

Presets (one module each beside this file) are small functions that fill these in.
Every field can be overridden from the command line (see configs/cli.py).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal, get_args

from configs.sources import SourceSpec, parse_source
from configs.tokenizers import TokenizersConfig

AttentionBackend = Literal["xla", "cudnn", "splash"]  # splash: the Pallas kernel on TPU, xla elsewhere
RematPolicy = Literal["none", "full", "dots_saveable", "dots_with_no_batch_dims_saveable"]
DType = Literal["float32", "bfloat16", "float16"]
Activation = Literal["silu", "gelu_tanh"]  # SwiGLU (Llama, ours), GeGLU (Gemma)
ATTENTION_BACKENDS, REMAT_POLICIES, DTYPES = get_args(AttentionBackend), get_args(RematPolicy), get_args(DType)
ACTIVATIONS = get_args(Activation)


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
    """SentencePiece pieces: the vocabulary's first ids"""
    image_vocab_size: int
    """image codes, the ids after the text pieces: the image tokenizer's codebook size"""
    audio_vocab_size: int
    """audio codes, the ids after the image codes: the audio tokenizer's codebook size"""
    d_model: int
    """width of the residual stream"""
    num_layers: int
    """decoder blocks"""
    num_heads: int
    """query heads per attention layer"""
    num_kv_heads: int
    """key/value heads: 1 = multi-query; num_heads = multi-head; in between = grouped-query"""
    head_dim: int
    """width of one attention head (even: RoPE rotates pairs)"""
    mlp_dim: int
    """hidden width of each block's gated MLP"""
    max_seq_len: int
    """longest sequence the model is built for: bounds data.seq_len and serve.max_cache_len"""
    tie_embeddings: bool = True
    """the output projection reuses the input embedding table"""
    qk_norm: bool = False
    """RMS-normalise queries and keys before attention"""
    # Options that open-weight families need (open_weights/): each defaults to the project's own choice.
    mlp_activation: Activation = "silu"
    """the gated MLP's gate: silu (SwiGLU: Llama's and ours) or gelu_tanh (GeGLU: Gemma's)"""
    norm_offset: bool = False
    """every RMSNorm scales by 1 + w, its weight starting at 0 (Gemma's), rather than by w"""
    embed_scale: bool = False
    """the input embeddings are multiplied by sqrt(d_model) (Gemma's); the tied head is not"""
    rope_base: float = 10_000.0
    """base of RoPE's rotation frequencies"""
    rope_scaling: tuple[float, ...] = ()
    """Llama 3.1's RoPE frequency scaling: (factor, low_freq_factor, high_freq_factor, original context); () for none"""
    norm_eps: float = 1e-6
    """epsilon added inside every RMSNorm"""
    param_dtype: DType = "float32"
    """dtype the parameters are stored and updated in"""
    compute_dtype: DType = "bfloat16"
    """dtype of the activations and matmuls"""
    remat_policy: RematPolicy = "dots_saveable"
    """what the backward pass recomputes, not keeps: nothing, everything (full), or all but the matmuls (dots_*)"""
    # 1 keeps compile time flat in depth (the scale presets); a shallow model unrolls all of them,
    # sparing the loop and its stacked per-layer buffers.
    scan_unroll: int = 1
    """layers per iteration of the layer scan"""
    attention_backend: AttentionBackend = "xla"
    """attention kernel: xla, cudnn (GPU), or splash (the Pallas kernel on TPU; xla elsewhere)"""
    # Given, each code's embedding is its own row plus a learned row per FSQ digit (model/layers.py,
    # Embedding).
    image_code_levels: tuple[int, ...] = ()
    """the image tokenizer's FSQ levels, to embed image codes digit by digit; () for plain rows"""
    audio_code_levels: tuple[int, ...] = ()
    """the audio tokenizer's FSQ levels, to embed audio codes digit by digit; () for plain rows"""

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
        if len(self.rope_scaling) not in (0, 4):
            _fail("model.rope_scaling", f"expected (factor, low_freq_factor, high_freq_factor, original context), "
                  f"got {tuple(self.rope_scaling)}")
        if self.mlp_activation not in ACTIVATIONS:
            _fail("model.mlp_activation", f"unknown activation {self.mlp_activation!r}; choose from {ACTIVATIONS}")
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

    dcn_data: int = 1
    """data parallelism across slices, over the data-centre network"""
    data: int = 1
    """data parallelism within a slice: the batch split along it, the parameters replicated"""
    fsdp: int = -1
    """fully sharded data parallelism: the batch and the weights split, weights gathered per layer"""
    tensor: int = 1
    """tensor parallelism: attention heads, MLP width and vocabulary split along it"""

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
    """What the LM trains on: packed rows of examples drawn from a weighted mixture of sources."""

    sources: tuple[str, ...] = ("world:1",)
    """the mixture, as KIND:WHERE:WEIGHT: world:1, manifest:/data/x.jsonl:2, tfds:NAME?kind=caption&image=image&text=caption:1 (configs/sources.py)"""
    seq_len: int = 512
    """tokens per training row"""
    global_batch_size: int = 8
    """rows per step, over all devices and micro-batches"""
    seed: int = 0
    """seed of the example order and templates, and of the text SentencePiece trains on"""
    overlong: Literal["truncate", "drop"] = "truncate"
    """an example longer than a row: cut it, or skip it"""
    packing_bins: int = 16
    """rows first-fit packing fills at once (more: denser rows, more latency)"""
    prefetch: int = 2
    """batches a background thread keeps ready (0: none)"""
    # Documents are the longest (two or three pictures and sounds each); at equal weights they take
    # ~60% of the tokens.
    world_mixture: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)
    """mixture weights of the world's caption, audio, document and video examples"""
    captioning_share: float = 0.5
    """of the world's caption examples, the share templated picture -> text (the rest: drawing)"""

    def __post_init__(self):
        _check_positive("data", self, ("seq_len", "global_batch_size", "packing_bins"))
        if not self.sources:
            _fail("data.sources", "name at least one source, e.g. world:1")
        try:
            names = [spec.name for spec in self.source_specs()]
        except ValueError as error:
            _fail("data.sources", str(error))
        if len(set(names)) < len(names):
            _fail("data.sources", f"two sources have one name ({names}): metrics are kept per source name")
        if len(self.world_mixture) != 4 or min(self.world_mixture) <= 0:
            _fail("data.world_mixture", f"needs 4 positive weights (caption, audio, document, video), got "
                  f"{self.world_mixture}")
        if not 0.0 <= self.captioning_share <= 1.0:
            _fail("data.captioning_share", f"must lie in [0, 1], got {self.captioning_share}")
        if self.overlong not in ("truncate", "drop"):
            _fail("data.overlong", f"must be 'truncate' or 'drop', got {self.overlong!r}")

    def source_specs(self) -> list[SourceSpec]:
        return [parse_source(spec) for spec in self.sources]


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The LM's optimiser, and its training loop's checkpoints and evals."""

    steps: int = 1000
    """LM optimiser steps in all; a resumed run goes on to this many"""
    learning_rate: float = 3e-4
    """the LM's peak learning rate, reached after warmup and decayed by a cosine to a tenth"""
    warmup_steps: int = 100
    """steps of the LM's linear learning-rate warmup"""
    weight_decay: float = 0.1
    """AdamW's decoupled weight decay"""
    grad_clip_norm: float = 1.0
    """the global gradient norm is clipped to this"""
    grad_accum_steps: int = 1
    """micro-batches each step's batch is split into (divides data.global_batch_size)"""
    z_loss_weight: float = 1e-4
    """weight of the z-loss, which pulls log Z toward 0: the stability fix early-fusion models needed"""
    seed: int = 0
    """seed of the LM's initial parameters and of the tokenizers' training"""
    init_from: str | None = None
    """hf:DIR, a Hugging Face Llama or Gemma checkpoint the LM starts from: its architecture replaces model's, its tokenizer.model (extended with our symbols) is the text tokenizer (open_weights/)"""
    checkpoint_every: int = 200
    """steps between checkpoints"""
    keep_checkpoints: int = 3
    """checkpoints kept on disk; older ones are deleted"""
    eval_every: int = 1000
    """steps between held-out evals; the last step is always evaluated"""
    eval_examples: int = 200
    """held-out examples per eval task"""
    eval_loss_examples: int = 64
    """held-out records per source (per kind, for the world) whose teacher-forced loss each eval measures"""

    def __post_init__(self):
        _check_positive("train", self, ("steps", "learning_rate", "grad_clip_norm", "grad_accum_steps",
                                        "checkpoint_every", "keep_checkpoints",
                                        "eval_every", "eval_examples", "eval_loss_examples"))
        if self.warmup_steps < 0:
            _fail("train.warmup_steps", f"must be >= 0, got {self.warmup_steps}")
        if self.init_from is not None and not self.init_from.startswith("hf:"):
            _fail("train.init_from", f"expected hf:DIR (a Hugging Face checkpoint folder), got {self.init_from!r}")
        if self.z_loss_weight < 0:
            _fail("train.z_loss_weight", f"must be >= 0, got {self.z_loss_weight}")


@dataclasses.dataclass(frozen=True)
class SFTConfig:
    """Instruction tuning, after the LM stage: conversations through the conversation template
    (data/conversation.py), from the LM's parameters, with an optimiser and schedule of its own.
    Its checkpoints, metrics and TensorBoard go to <workdir>/sft/."""

    steps: int = 0
    """SFT optimiser steps in all (0: no SFT stage); a resumed run goes on to this many"""
    learning_rate: float = 1e-4
    """SFT's peak learning rate, after warmup, decayed by a cosine to a tenth"""
    warmup_steps: int = 20
    """steps of SFT's linear learning-rate warmup"""
    checkpoint_every: int = 100
    """SFT steps between checkpoints"""
    eval_every: int = 200
    """SFT steps between held-out evals; the last step is always evaluated"""
    sources: tuple[str, ...] = ("world:1",)
    """SFT's mixture, as data.sources spells it: world:W is the world's conversations (data/world_chat.py); a manifest's conversations train their assistant turns"""
    replay: float = 0.1
    """share of the world's SFT weight given to its pre-training examples (the rest: its conversations), so that tuning keeps the pre-trained tasks"""
    init_from: str | None = None
    """start from this run's latest LM checkpoint (its workdir; parameters only) instead of this run's"""

    def __post_init__(self):
        _check_positive("sft", self, ("learning_rate", "checkpoint_every", "eval_every"))
        for name in ("steps", "warmup_steps"):
            if getattr(self, name) < 0:
                _fail(f"sft.{name}", f"must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.replay < 1:
            _fail("sft.replay", f"must be in [0, 1), got {self.replay}")
        for spec in self.sources:
            try:
                parse_source(spec)
            except ValueError as error:
                _fail("sft.sources", str(error))


@dataclasses.dataclass(frozen=True)
class ServeConfig:
    """serve.py's engine, its limits, and where it listens."""

    slots: int = 8
    """concurrent decode slots sharing one KV cache"""
    max_cache_len: int = 1024
    """KV cache positions per slot: the longest prompt + reply"""
    max_tokens: int = 256
    """the most tokens one request may ask to generate"""
    prefix_cache_tokens: int = 8192
    """prompt tokens whose keys and values are kept for later prompts that start the same way (LRU, in blocks of 16; 0: off)"""
    max_queue: int = 256
    """requests waiting for a slot; one more gets 429"""
    request_timeout_s: float = 120.0
    """seconds a request may take; past them it gets 504 and its slot is freed"""
    max_body_bytes: int = 8 * 2**20
    """the largest request body, or fetched image, in bytes"""
    max_prompts: int = 64
    """prompts in one completions request's list; more is a 400"""
    max_prompt_chars: int = 200_000
    """characters of text in one request's prompts or messages; more is a 400, before any is tokenized"""
    max_audio_sample_rate: int = 48_000
    """the highest WAV sample rate accepted, in Hz (resampling cost grows with it); the lowest is 1,000"""
    max_video_bytes: int = 4 * 2**20
    """the largest video (GIF, MP4, WebM) one content part may carry, in bytes"""
    max_video_seconds: float = 30.0
    """the longest video accepted, in seconds (only its first tokenizers.video.max_frames samples are kept)"""
    max_video_frames: int = 300
    """the most frames decoded from one video before its samples are taken (a file may pack many into a second)"""
    fetch_timeout_s: float = 10.0
    """seconds one remote image may take to fetch, all of it (connect, headers, body)"""
    header_timeout_s: float = 10.0
    """seconds a client has to send a request's headers, from connecting or from its previous reply"""
    body_timeout_s: float = 30.0
    """seconds a client has to send a request's body once its headers are in; past them 408"""
    keep_alive_s: float = 5.0
    """seconds an idle kept-alive connection stays open"""
    max_connections: int = 512
    """open connections and requests at once; past it a new request gets 503"""
    int8_weights: bool = False
    """weight-only int8 (model/weights.py): half of bfloat16's bytes to hold and to read each step"""
    host: str = "127.0.0.1"
    """address the HTTP server binds"""
    port: int = 8000
    """TCP port the HTTP server listens on"""

    def __post_init__(self):
        _check_positive("serve", self, ("slots", "max_cache_len", "max_tokens", "max_queue", "request_timeout_s",
                                        "max_body_bytes", "max_prompts", "max_prompt_chars", "max_audio_sample_rate",
                                        "max_video_bytes", "max_video_seconds", "max_video_frames",
                                        "fetch_timeout_s", "header_timeout_s", "body_timeout_s", "keep_alive_s",
                                        "max_connections", "port"))


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
    """Everything a preset sets; the scripts take each field as a flag (configs/cli.py)."""

    name: str
    """the run's name: its default workdir is runs/<name>, and serve.py answers as model <name>"""
    model: ModelConfig
    mesh: MeshConfig = MeshConfig()
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    serve: ServeConfig = ServeConfig()
    tokenizers: TokenizersConfig = TokenizersConfig()
    sft: SFTConfig = SFTConfig()

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
            if getattr(self.model, f"{kind}_vocab_size") not in (0, codes):  # 0: a text-only model (serve.py --init-from)
                _fail(f"model.{kind}_vocab_size", f"{getattr(self.model, f'{kind}_vocab_size')} differs from the "
                      f"{codes} codes of tokenizers.{kind}.levels={getattr(self.tokenizers, kind).levels}")
        if self.data.seq_len > self.model.max_seq_len:
            _fail("data.seq_len", f"{self.data.seq_len} exceeds model.max_seq_len={self.model.max_seq_len}")
        if self.serve.max_cache_len > self.model.max_seq_len:
            _fail("serve.max_cache_len", f"{self.serve.max_cache_len} exceeds model.max_seq_len={self.model.max_seq_len}")
