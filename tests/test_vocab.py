"""The unified vocabulary: segments round-trip exactly; masks and modalities are per position."""

import dataclasses
import io

import numpy as np
import pytest
import sentencepiece as spm

from configs import get_config
from data import templates, world
from tokenization.text import CONTROL, TextTokenizer, train_text_tokenizer
from data.vocab import AUDIO, IMAGE, TEXT, Audio, Image, Text, Video, Vocabulary

CORPUS = [f"a {size} {colour} {shape} in the {pos}" for size in ("small", "large")
          for colour in ("red", "green", "blue") for shape in ("circle", "square") for pos in ("top left", "bottom right")]
CORPUS += [f"the tones were {a} {b} #" for a in range(10) for b in range(10)]


@pytest.fixture(scope="module")
def vocab():
    return Vocabulary(train_text_tokenizer(CORPUS * 5, vocab_size=300), get_config("tiny").model)


def test_control_symbols_have_fixed_low_ids(vocab):
    assert [vocab.ids[s] for s in ("<pad>", "<bos>", "<eos>")] == [0, 1, 2]
    assert sorted(vocab.ids[s] for s in CONTROL) == list(range(4, 4 + len(CONTROL)))


def test_a_digit_is_one_piece_wherever_it_stands():
    """A tone in a transcript and in a sentence answer is the same token, so a model that copies it
    copies one id (a BPE that merged "5." made the sentence's 5 another token)."""
    text = train_text_tokenizer(world.world_texts(0, 300), vocab_size=1024)
    five = text.encode("5")[-1]
    for said in ("tones 1 5 #", "It was 5.", "tones 5.", "There were 15 tones."):
        pieces = [text.piece(i) for i in text.encode(said)]
        assert five in text.encode(said), pieces
        assert all(not any(c.isdigit() for c in p) or p.strip().isdigit() and len(p.strip()) == 1 for p in pieces), pieces


def test_text_and_codes_round_trip_exactly(vocab):
    image_codes = np.arange(64) * 15 % 1000
    audio_codes = np.array([0, 999, 5, 17, 500])
    segments = [Text("Describe:"), Image(codes=image_codes), Text("a small red circle — 日本"),
                Audio(codes=audio_codes), Text("the tones were 1 5 #")]
    decoded = vocab.decode(vocab.encode(segments).ids)
    assert [type(s) for s in decoded] == [Text, Image, Text, Audio, Text]
    assert decoded[0].text == "Describe:" and decoded[2].text == "a small red circle — 日本"
    assert decoded[4].text == "the tones were 1 5 #"
    np.testing.assert_array_equal(decoded[1].codes, image_codes)
    np.testing.assert_array_equal(decoded[3].codes, audio_codes)


def test_loss_mask_and_modality_follow_the_segments(vocab):
    encoded = vocab.encode([Text("Describe:", loss=False), Image(codes=np.zeros(64, int), loss=False),
                            Text("a red circle")])
    ids, loss, modality = encoded.ids, encoded.loss_mask, encoded.modality
    boi, eoi = list(ids).index(vocab.ids["<boi>"]), list(ids).index(vocab.ids["<eoi>"])
    assert eoi - boi == 65 and ids[0] == vocab.ids["<bos>"] and ids[-1] == vocab.ids["<eos>"]
    assert not loss[: eoi + 1].any() and loss[eoi + 1 :].all()  # the answer and its <eos> are trained
    assert (modality[boi + 1 : eoi] == IMAGE).all() and modality[boi] == TEXT and modality[eoi] == TEXT
    audio = vocab.encode([Audio(codes=np.array([3, 4]))])
    assert list(audio.modality) == [TEXT, TEXT, AUDIO, AUDIO, TEXT, TEXT]
    assert audio.ids[2] == vocab.audio_offset + 3 and audio.ids.max() < vocab.size


def test_codes_out_of_range_or_missing_tokenizer_are_named(vocab):
    with pytest.raises(ValueError, match=r"image codes must lie in \[0, 1000\)"):
        vocab.encode([Image(codes=np.array([1000]))])
    with pytest.raises(ValueError, match="no audio tokenizer"):
        vocab.encode([Audio(waveform=np.zeros(16000, np.float32))])


def test_a_user_model_without_our_control_symbols_is_refused():
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(CORPUS * 5), model_writer=model, vocab_size=60,
                                   hard_vocab_limit=False, minloglevel=2)
    with pytest.raises(ValueError, match="lacks the control symbols"):
        TextTokenizer(model.getvalue())


def test_a_text_vocabulary_larger_than_the_config_range_is_refused():
    small = dataclasses.replace(get_config("tiny").model, text_vocab_size=100)
    with pytest.raises(ValueError, match="model.text_vocab_size"):
        Vocabulary(train_text_tokenizer(CORPUS * 5, vocab_size=300), small)


def test_any_generated_ids_decode_without_error(vocab):
    """A model may emit any id: stray codes and unused ids read as <unk>, a short image keeps its codes."""
    rng = np.random.default_rng(0)
    for _ in range(20):
        segments = vocab.decode(rng.integers(0, vocab.size, 50))
        assert all(isinstance(s, (Text, Image, Audio, Video)) for s in segments)
    stray = vocab.decode([vocab.text.encode("a red")[0], vocab.image_offset + 5, vocab.size - 1])
    assert len(stray) == 1 and stray[0].text.count("⁇") == 2
    short = vocab.decode([vocab.ids["<boi>"], vocab.image_offset + 1, vocab.image_offset + 2, vocab.ids["<eoi>"]])
    assert short[0].codes.tolist() == [1, 2] and short[0].pixels is None  # too few codes for a picture


def test_a_video_is_its_frames_image_runs_inside_bov_eov(vocab):
    """<bov> (<boi> codes <eoi>) per frame <eov>: frame codes are image ids, the delimiters text; the
    codes decode back frame by frame, and a cut-short last frame is dropped."""
    codes = np.arange(3 * 64).reshape(3, 64) * 7 % 1000
    encoded = vocab.encode([Text("Describe the clip:", loss=False), Video(codes=codes, loss=False), Text("a red circle")])
    ids = list(encoded.ids)
    bov, eov = ids.index(vocab.ids["<bov>"]), ids.index(vocab.ids["<eov>"])
    assert eov - bov == 1 + 3 * 66 and ids[bov + 1] == vocab.ids["<boi>"] and ids[bov + 66] == vocab.ids["<eoi>"]
    assert ids[bov + 2] == vocab.image_offset + codes[0, 0]
    assert (encoded.modality[bov + 2 : bov + 66] == IMAGE).all() and encoded.modality[bov] == TEXT
    assert not encoded.loss_mask[: eov + 1].any() and encoded.loss_mask[eov + 1 :].all()
    decoded = vocab.decode(encoded.ids)
    assert [type(s) for s in decoded] == [Text, Video, Text]
    np.testing.assert_array_equal(decoded[1].codes, codes)
    assert decoded[1].frames is None  # this vocabulary has no image tokenizer
    cut = vocab.decode(encoded.ids[: bov + 66 + 10])  # frame 2 has 8 of its codes
    assert cut[1].codes.shape == (1, 64)
    with pytest.raises(ValueError, match="video frame codes must lie"):
        vocab.encode([Video(codes=np.full((2, 64), 1000))])
    with pytest.raises(ValueError, match="no image tokenizer"):
        vocab.encode([Video(frames=np.zeros((2, 32, 32, 3), np.uint8))])


def test_a_clip_inside_a_world_document_is_trained_whole(vocab):
    """An interleaved document trains every token, a clip's frames included; in video captioning
    only the caption (and its <eos>) trains."""
    rng = np.random.default_rng(0)
    document = next(s for s in (world.sample_example(rng, "document", "train") for _ in range(40))
                    if any(isinstance(part, Video) for part in s))
    coded = [Video(codes=np.zeros((len(p.frames), 64), int)) if isinstance(p, Video) else
             Image(codes=np.zeros(64, int)) if isinstance(p, Image) else
             Audio(codes=np.zeros(25, int)) if isinstance(p, Audio) else p for p in document]
    encoded = vocab.encode(templates.document(coded))
    ids = encoded.ids.tolist()
    assert ids.count(vocab.ids["<bov>"]) == 1 and ids.count(vocab.ids["<eov>"]) == 1
    assert encoded.loss_mask[1:].all()
    _, clip = world.make_example(0, "train", 3)
    task, segments = templates.apply("video", [Video(codes=np.zeros((4, 64), int)), clip[1]], rng)
    encoded = vocab.encode(segments)
    eov = encoded.ids.tolist().index(vocab.ids["<eov>"])
    assert task == "video_captioning" and not encoded.loss_mask[: eov + 1].any() and encoded.loss_mask[eov + 1 :].all()
