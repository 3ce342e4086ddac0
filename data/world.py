"""The procedural CPU world: coloured shapes, DTMF tones, clips of shapes that move, change colour
or appear, and documents mixing them, from a seed.

Pure numpy and fully deterministic: example `index` of `split` under `seed` is rendered from
`np.random.default_rng([seed, split_id, index])`, so any worker can make any example and nothing
is downloaded. Every example is a fresh rendering (position, size, hue, background, tone timing
and level are jittered) but carries no per-pixel or per-sample noise: a tokenizer cannot
reconstruct noise, so it would only blur what learning we can measure.

Some (shape, colour) pairs never appear in train or validation; the "compositional" split holds
only those, to test whether a model composes attributes it has seen apart.
"""

from __future__ import annotations

import numpy as np

from data.segments import Audio, Image, Segment, Text, Video

IMAGE_SIZE = 32
SAMPLE_RATE = 16000
CLIP_SECONDS = 1.0  # every clip has exactly this length: a fixed number of audio tokens

SHAPES = ("circle", "square", "triangle", "cross")
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 70, 220),
    "yellow": (235, 200, 20),
    "magenta": (200, 40, 200),
    "cyan": (30, 190, 210),
}
SIZES = ("small", "large")
POSITIONS = ("top left", "top right", "bottom left", "bottom right")
# One held-out colour per shape but the square, each colour at most once, so every held-out pair
# has both its shape and its colour well represented in training.
HELD_OUT_COMBINATIONS = (("triangle", "green"), ("circle", "blue"), ("cross", "red"))

SPLITS = ("train", "validation", "compositional")
KINDS = ("caption", "audio", "document", "video")
# Audio carries no shape or colour, so the compositional split holds only image-bearing kinds.
SPLIT_KINDS = {"train": KINDS, "validation": KINDS, "compositional": ("caption", "document", "video")}

# A clip: FRAMES frames at CLIP_FPS (2 s), one of three events, told by its caption:
#   moves    "a small red circle moves from the top left to the bottom right"
#   turns    "a small red circle in the top left turns blue"
#   appears  "a small red circle is joined by a large blue square" (in the order they show up: the
#            model names the shape of the first frames before it must read a two-shape frame)
FRAMES, CLIP_FPS = 4, 2.0
EVENTS = ("moves", "turns", "appears")

# The DTMF keypad: each key is one low (row) tone plus one high (column) tone.
ROW_HZ = (697.0, 770.0, 852.0, 941.0)
COL_HZ = (1209.0, 1336.0, 1477.0, 1633.0)
KEYPAD = ("123A", "456B", "789C", "*0#D")
SYMBOLS = "".join(KEYPAD)
_KEY_HZ = {key: (ROW_HZ[r], COL_HZ[c]) for r, row in enumerate(KEYPAD) for c, key in enumerate(row)}



# ---------------------------------------------------------------------------------------------
# Attributes and text


def sample_attributes(rng: np.random.Generator, split: str) -> tuple[str, str, str, str]:
    """(shape, colour, size, position): held-out pairs only in "compositional", never elsewhere."""
    if split == "compositional":
        shape, colour = HELD_OUT_COMBINATIONS[rng.integers(len(HELD_OUT_COMBINATIONS))]
    elif split in SPLITS:
        shape, colour = HELD_OUT_COMBINATIONS[0]
        while (shape, colour) in HELD_OUT_COMBINATIONS:  # rejection keeps the other pairs uniform
            shape, colour = _pick(rng, SHAPES), _pick(rng, tuple(COLOURS))
    else:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    return shape, colour, _pick(rng, SIZES), _pick(rng, POSITIONS)


def caption(shape: str, colour: str, size: str, position: str) -> str:
    return f"a {size} {colour} {shape} in the {position}"


def transcript(symbols: str) -> str:
    return "tones " + " ".join(symbols)


def sample_symbols(rng: np.random.Generator) -> str:
    return "".join(_pick(rng, tuple(SYMBOLS)) for _ in range(rng.integers(2, 5)))


def _pick(rng: np.random.Generator, options: tuple):
    return options[rng.integers(len(options))]


# ---------------------------------------------------------------------------------------------
# Images


def _shape_distance(shape: str, dx: np.ndarray, dy: np.ndarray, radius: float) -> np.ndarray:
    """Signed distance in pixels to the shape's edge (negative inside), about exact near it."""
    if shape == "circle":
        return np.hypot(dx, dy) - radius
    if shape == "square":
        return np.maximum(np.abs(dx), np.abs(dy)) - 0.85 * radius  # about the circle's area
    if shape == "triangle":  # equilateral, apex up, bounding box centred: three half-planes
        inradius = 0.6 * radius  # half-width sqrt(3) * inradius: 6.2 px at radius 6
        dy = dy - 0.5 * inradius  # the centroid sits below the box centre
        left, right = -0.5 * np.sqrt(3.0) * dx - 0.5 * dy, 0.5 * np.sqrt(3.0) * dx - 0.5 * dy
        return np.maximum.reduce([dy, left, right]) - inradius
    if shape == "cross":  # a plus sign: the union of two bars
        arm, half_width = 1.05 * radius, 0.38 * radius
        horizontal = np.maximum(np.abs(dx) - arm, np.abs(dy) - half_width)
        vertical = np.maximum(np.abs(dx) - half_width, np.abs(dy) - arm)
        return np.minimum(horizontal, vertical)
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def _placement(rng: np.random.Generator, size: str, position: str, radius: float | None = None):
    """(radius, centre x, centre y) of a shape of `size` in the quadrant `position`, jittered.

    The shape stays inside its quadrant (half-extent <= 6.3 px and centre within 1.5 px of the
    quadrant's centre when large, <= 4.2 px and 3 px when small), so its position is never
    ambiguous; small and large never overlap in size."""
    if size not in SIZES or position not in POSITIONS:
        raise ValueError(f"bad size {size!r} or position {position!r}")
    quadrant = IMAGE_SIZE // 2
    if radius is None:
        radius = rng.uniform(3.0, 4.0) if size == "small" else rng.uniform(5.0, 6.0)
    jitter = 3.0 if size == "small" else 1.5
    top, left = ("bottom" in position) * quadrant, ("right" in position) * quadrant
    cy = top + quadrant / 2 + rng.uniform(-jitter, jitter)
    cx = left + quadrant / 2 + rng.uniform(-jitter, jitter)
    return radius, cx, cy


def _foreground(rng: np.random.Generator, colour: str) -> np.ndarray:
    return np.clip(np.array(COLOURS[colour]) + rng.uniform(-15, 15, 3), 0, 255)


def _paint(image_hwc: np.ndarray, shape: str, foreground_c: np.ndarray, radius: float, cx: float, cy: float) -> np.ndarray:
    """The shape over a float picture. Edges are anti-aliased by turning the signed distance at
    each pixel centre into coverage."""
    y_h1, x_1w = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE] + 0.5  # pixel centres
    coverage_hw = np.clip(0.5 - _shape_distance(shape, x_1w - cx, y_h1 - cy, radius), 0.0, 1.0)
    return image_hwc + coverage_hw[..., None] * (foreground_c - image_hwc)


def _background(rng: np.random.Generator) -> np.ndarray:
    return np.full((IMAGE_SIZE, IMAGE_SIZE, 3), rng.uniform(190, 235))


def render_image(rng: np.random.Generator, shape: str, colour: str, size: str, position: str) -> np.ndarray:
    """One jittered shape on a plain light-grey background, uint8 [32, 32, 3]."""
    radius, cx, cy = _placement(rng, size, position)
    foreground_c = _foreground(rng, colour)
    image_hwc = _paint(_background(rng), shape, foreground_c, radius, cx, cy)
    return np.round(image_hwc).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# Clips


def clip_caption(event: str, first: tuple[str, str, str, str], detail: tuple[str, ...]) -> str:
    """The caption of a clip whose first shape is `first` (shape, colour, size, position):
    `detail` is the end position (moves), the new colour (turns) or the second shape's (shape,
    colour, size, position) (appears)."""
    shape, colour, size, position = first
    if event == "moves":
        return f"a {size} {colour} {shape} moves from the {position} to the {detail[0]}"
    if event == "turns":
        return f"a {size} {colour} {shape} in the {position} turns {detail[0]}"
    if event == "appears":
        return f"a {size} {colour} {shape} is joined by a {detail[2]} {detail[1]} {detail[0]}"
    raise ValueError(f"unknown event {event!r}; expected one of {EVENTS}")


def parse_clip_caption(text: str) -> tuple[str, tuple, tuple] | None:
    """(event, shapes, change) of a clip caption, or None if it is not one: `shapes` are the
    (size, colour, shape) it names, `change` what happens (the positions moved between, the place
    and the new colour, or nothing but the appearance). Scores a caption part by part."""
    words = text.split(" ")
    if len(words) < 4 or words[0] != "a":
        return None
    first = tuple(words[1:4])
    if not (first[0] in SIZES and first[1] in COLOURS and first[2] in SHAPES):
        return None
    rest = " ".join(words[4:])
    for a in POSITIONS:
        for b in POSITIONS:
            if rest == f"moves from the {a} to the {b}":
                return "moves", (first,), (a, b)
        for colour in COLOURS:
            if rest == f"in the {a} turns {colour}":
                return "turns", (first,), (a, colour)
    second = tuple(words[8:11])
    if words[4:8] == ["is", "joined", "by", "a"] and len(words) == 11 and (
            second[0] in SIZES and second[1] in COLOURS and second[2] in SHAPES):
        return "appears", (first, second), ()
    return None


def _other(rng: np.random.Generator, options: tuple, *taken):
    return _pick(rng, tuple(o for o in options if o not in taken))


def sample_clip(rng: np.random.Generator, split: str) -> tuple[np.ndarray, str]:
    """(frames uint8 [FRAMES, 32, 32, 3], caption) of a fresh clip: a shape that moves from one
    quadrant to another (its centre interpolated across the frames), one that changes colour at a
    random frame, or a second shape that appears at a random frame beside the first. The first
    shape's (shape, colour) pair follows the split's rule; a new colour or a second shape is never
    a held-out pair outside the compositional split."""
    event = _pick(rng, EVENTS)
    first = sample_attributes(rng, split)
    shape, colour, size, position = first
    canvas = _background(rng)
    radius, cx, cy = _placement(rng, size, position)
    foreground_c = _foreground(rng, colour)
    if event == "moves":
        end = _other(rng, POSITIONS, position)
        _, ex, ey = _placement(rng, size, end, radius)
        frames = [_paint(canvas, shape, foreground_c, radius, cx + t * (ex - cx), cy + t * (ey - cy))
                  for t in np.linspace(0.0, 1.0, FRAMES)]
        detail: tuple = (end,)
    elif event == "turns":
        held = {c for s, c in HELD_OUT_COMBINATIONS if s == shape} if split != "compositional" else set()
        new = _other(rng, tuple(COLOURS), colour, *held)
        change, new_c = int(rng.integers(1, FRAMES)), _foreground(rng, new)
        frames = [_paint(canvas, shape, foreground_c if i < change else new_c, radius, cx, cy) for i in range(FRAMES)]
        detail = (new,)
    else:
        second = sample_attributes(rng, "train" if split == "compositional" else split)
        second = (*second[:3], _other(rng, POSITIONS, position))
        r2, x2, y2 = _placement(rng, second[2], second[3])
        appear, second_c = int(rng.integers(1, FRAMES)), _foreground(rng, second[1])
        alone = _paint(canvas, shape, foreground_c, radius, cx, cy)
        both = _paint(alone, second[0], second_c, r2, x2, y2)
        frames = [alone if i < appear else both for i in range(FRAMES)]
        detail = second
    return np.round(np.stack(frames)).astype(np.uint8), clip_caption(event, first, detail)


def detect_picture(image_hwc: np.ndarray) -> tuple[str | None, str | None]:
    """(colour, position) of the one shape in a picture, or (None, None) when nothing stands out.

    The background is always grey and every shape colour is saturated, so the shape is the set
    of clearly coloured pixels: its mean colour names the nearest palette colour and its centroid
    the quadrant. This scores generated pictures, so it is deliberately no cleverer than that.
    """
    image_hwc = np.asarray(image_hwc, np.float32)
    saturation_hw = image_hwc.max(-1) - image_hwc.min(-1)
    shape_hw = saturation_hw > 0.5 * max(float(saturation_hw.max()), 60.0)
    if shape_hw.sum() < 4:
        return None, None
    mean_c = image_hwc[shape_hw].mean(0)
    colour = min(COLOURS, key=lambda name: float(np.sum((np.array(COLOURS[name]) - mean_c) ** 2)))
    y_n, x_n = np.nonzero(shape_hw)
    half = image_hwc.shape[0] / 2
    vertical = "bottom" if y_n.mean() + 0.5 >= half else "top"
    horizontal = "right" if x_n.mean() + 0.5 >= image_hwc.shape[1] / 2 else "left"
    return colour, f"{vertical} {horizontal}"


def parse_caption(text: str) -> tuple[str, str, str, str] | None:
    """The (shape, colour, size, position) a caption names, or None if it is not a world caption."""
    for shape in SHAPES:
        for colour in COLOURS:
            for size in SIZES:
                for position in POSITIONS:
                    if caption(shape, colour, size, position) == text:
                        return shape, colour, size, position
    return None


# ---------------------------------------------------------------------------------------------
# DTMF audio


def render_dtmf(rng: np.random.Generator, symbols: str, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """The keys' tones in order, float32 mono of exactly CLIP_SECONDS, peak <= 0.9.

    Tones last 120-200 ms (shorter caps for four keys so the clip fits), gaps 40-80 ms; each
    tone has its own level, phases and a +-1.5% frequency error (the DTMF tolerance), with 5 ms
    fades so no edge clicks.
    """
    if not 1 <= len(symbols) <= 4 or any(s not in _KEY_HZ for s in symbols):
        raise ValueError(f"need 1-4 keys from {SYMBOLS!r}, got {symbols!r}")
    n = len(symbols)
    clip_ms = 1000.0 * CLIP_SECONDS
    longest_ms = min(200.0, (clip_ms - 120.0 - 80.0 * (n - 1)) / n)  # lead + tail >= 40 ms each
    audio = np.zeros(int(sample_rate * CLIP_SECONDS), np.float32)
    start_ms = rng.uniform(20.0, 60.0)
    for key in symbols:
        duration_ms = rng.uniform(120.0, longest_ms)
        t = np.arange(int(sample_rate * duration_ms / 1000)) / sample_rate
        level = rng.uniform(0.3, 0.9)
        tone = sum(
            0.5 * level * np.sin(2 * np.pi * hz * rng.uniform(0.985, 1.015) * t + rng.uniform(0, 2 * np.pi))
            for hz in _KEY_HZ[key]
        )
        fade = np.minimum(1.0, np.minimum(t, t[-1] - t) / 0.005)
        begin = int(sample_rate * start_ms / 1000)
        audio[begin : begin + len(t)] = tone * fade
        start_ms += duration_ms + rng.uniform(40.0, 80.0)
    return audio


def detect_dtmf(audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> str:
    """The key sequence in a clip: per 10 ms frame, which row and column tone dominate.

    A 40 ms Hann window resolves the closest tones (697 vs 770 Hz); each tone is probed across
    its +-1.5% tolerance. A frame counts when it is loud (a tenth of the loudest counted frame),
    its strongest row and column tones each beat the runner-up fourfold, and together they hold
    most of the frame's energy; a key is a run of >= 3 such frames. It is meant for tokenizer
    reconstructions too: it still reads clips with white noise at 10 dB SNR.
    """
    window, hop = int(0.04 * sample_rate), int(0.01 * sample_rate)
    audio = np.asarray(audio, np.float64).reshape(-1)
    if len(audio) < window:
        return ""
    starts = np.arange(0, len(audio) - window + 1, hop)
    frames_fw = audio[starts[:, None] + np.arange(window)] * np.hanning(window)
    t_w = np.arange(window) / sample_rate
    hz_ko = np.array(ROW_HZ + COL_HZ)[:, None] * np.linspace(0.985, 1.015, 5)  # the DTMF tolerance
    probe_wko = np.exp(-2j * np.pi * hz_ko[None] * t_w[:, None, None])
    power_fk = np.max(np.abs(np.einsum("fw,wko->fko", frames_fw, probe_wko)) ** 2, axis=-1)
    energy_f = np.sum(frames_fw**2, axis=1) * window / 3  # so one clean sinusoid's power == energy
    row_fk, col_fk = power_fk[:, :4], power_fk[:, 4:]
    row_top_f, col_top_f = row_fk.max(axis=1), col_fk.max(axis=1)
    row_second_f, col_second_f = np.sort(row_fk, axis=1)[:, -2], np.sort(col_fk, axis=1)[:, -2]
    tone_f = row_top_f + col_top_f
    valid_f = (row_top_f > 4 * row_second_f) & (col_top_f > 4 * col_second_f) & (tone_f > 0.5 * energy_f)
    valid_f &= tone_f > 0.1 * np.max(tone_f * valid_f, initial=0.0)
    rows_f, cols_f = row_fk.argmax(axis=1), col_fk.argmax(axis=1)
    frame_keys = [KEYPAD[r][c] if ok else None for r, c, ok in zip(rows_f, cols_f, valid_f)]
    symbols, run_key, run = [], None, 0
    for key in frame_keys + [None]:
        if key == run_key:
            run += 1
            continue
        if run_key is not None and run >= 3:
            symbols.append(run_key)
        run_key, run = key, 1
    return "".join(symbols)


# ---------------------------------------------------------------------------------------------
# Examples


def _merge_text(segments: list[Segment]) -> list[Segment]:
    """Adjacent text segments joined by a space: a document alternates text and media."""
    merged: list[Segment] = []
    for segment in segments:
        if isinstance(segment, Text) and merged and isinstance(merged[-1], Text):
            merged[-1] = Text(f"{merged[-1].text} {segment.text}")
        else:
            merged.append(segment)
    return merged


def _document_item(rng: np.random.Generator, medium: str, split: str) -> list[Segment]:
    """One picture, sound or clip with its text, either describing it or asking for it."""
    describe = rng.random() < 0.5
    if medium == "video":
        frames, words = sample_clip(rng, split)
        if describe:
            return [Text(_pick(rng, ("Here is a clip:", "Watch this:"))), Video(frames=frames), Text(f"In it, {words}.")]
        return [Text(f"{_pick(rng, ('A clip in which', 'Animate'))} {words}:"), Video(frames=frames)]
    if medium == "image":
        attributes = sample_attributes(rng, split)
        image, words = render_image(rng, *attributes), caption(*attributes)
        if describe:
            intro = _pick(rng, ("Here is a picture:", "Look at this:"))
            return [Text(intro), Image(pixels=image), Text(f"It shows {words}.")]
        return [Text(f"{_pick(rng, ('A picture of', 'Draw'))} {words}:"), Image(pixels=image)]
    symbols = sample_symbols(rng)
    audio, spoken = render_dtmf(rng, symbols), " ".join(symbols)
    if describe:
        intro = _pick(rng, ("Here is a sound:", "Listen:"))
        return [Text(intro), Audio(waveform=audio), Text(f"The tones were {spoken}.")]
    return [Text(f"{_pick(rng, ('The sound of tones', 'Play tones'))} {spoken}:"), Audio(waveform=audio)]


def sample_example(rng: np.random.Generator, kind: str, split: str) -> list[Segment]:
    """A fresh rendering of `kind` as a segment list.

    caption: [image, text]; audio: [audio, text]; video: [video, text]; document: two or three
    pictures, sounds and clips (at least one picture and one sound, in random order), each
    described after it or asked for before it.
    """
    if kind == "caption":
        attributes = sample_attributes(rng, split)
        return [Image(pixels=render_image(rng, *attributes)), Text(caption(*attributes))]
    if kind == "audio":
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        symbols = sample_symbols(rng)
        return [Audio(waveform=render_dtmf(rng, symbols)), Text(transcript(symbols))]
    if kind == "video":
        frames, words = sample_clip(rng, split)
        return [Video(frames=frames), Text(words)]
    if kind == "document":
        media = ["image", "audio"] + ([_pick(rng, ("image", "audio", "video"))] if rng.random() < 0.5 else [])
        rng.shuffle(media)
        return _merge_text([segment for medium in media for segment in _document_item(rng, medium, split)])
    raise ValueError(f"unknown kind {kind!r}; expected one of {KINDS}")


def example_kind(split: str, index: int) -> str:
    """Kinds take turns by index, so any prefix of a split is balanced."""
    kinds = SPLIT_KINDS[split]
    return kinds[index % len(kinds)]


def make_example(seed: int, split: str, index: int) -> tuple[str, list[Segment]]:
    """(kind, segments) of example `index` of `split`: the same arguments, the same arrays."""
    rng = np.random.default_rng([seed, SPLITS.index(split), index])
    kind = example_kind(split, index)
    return kind, sample_example(rng, kind, split)


def world_texts(seed: int, count: int) -> list[str]:
    """The text of `count` training examples: what SentencePiece learns its pieces from."""
    texts = []
    for index in range(count):
        _, segments = make_example(seed, "train", index)
        texts += [s.text for s in segments if isinstance(s, Text)]
    return texts
