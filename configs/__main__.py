"""`python -m configs`: a table of every preset's size and cost."""

from configs import PRESETS, get_config
from model.costs import analytic_params, counted_params, kv_cache_bytes_per_token, train_flops_per_token


def _si(x: float) -> str:
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{unit}"
    return f"{x:.3g}"


def _clip(cfg) -> str:
    """A clip's budget: frames (at fps) x (image tokens + 2), + 2, against a training row."""
    video, image_tokens = cfg.tokenizers.video, cfg.tokenizers.image.tokens_per_image
    return (f"{video.max_frames} @ {video.fps:g} fps x {image_tokens + 2} = {video.tokens(image_tokens):,} / "
            f"{cfg.data.seq_len:,}")


def table() -> str:
    header = ("preset", "params (counted)", "params (formula)", "match", "shape", "vocab",
              "train FLOPs/token @seq", "KV-cache bytes/token", "clip: frames x tokens = tokens / row")
    rows = []
    for name in PRESETS:
        cfg = get_config(name)
        m = cfg.model
        counted, formula = counted_params(m), analytic_params(m)
        rows.append((
            name,
            f"{counted:,} ({_si(counted)})",
            f"{formula:,}",
            "exact" if counted == formula else f"off by {counted - formula:+,}",
            f"d {m.d_model}, L {m.num_layers}, {m.num_heads}q/{m.num_kv_heads}kv x {m.head_dim}, ffn {m.mlp_dim}",
            f"{m.vocab_size:,}",
            f"{train_flops_per_token(m, cfg.data.seq_len):.3e} @{cfg.data.seq_len}",
            f"{kv_cache_bytes_per_token(m):,} ({m.compute_dtype})",
            _clip(cfg),
        ))
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


if __name__ == "__main__":
    print(table())
