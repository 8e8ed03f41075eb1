import json

import pytest
import torch

from cascade.model.text import (
    TextEncoder,
    ToyTextEncoder,
    WordTokenizer,
    load_text_encoder,
    save_text_encoder,
    split_words,
)

VOCAB = ["a", "red", "blue", "circle", "square", "moving", "left", "right", "on", "background"]


@pytest.fixture
def tokenizer():
    return WordTokenizer(VOCAB, max_length=6)


@pytest.fixture
def encoder(tokenizer):
    torch.manual_seed(0)
    return ToyTextEncoder(tokenizer.vocab_size, dim=16, max_length=tokenizer.max_length).eval()


def test_split_words_lowercases_and_drops_punctuation():
    words = split_words("A Red-circle, moving LEFT! 3x")
    assert words == ["a", "red", "circle", "moving", "left", "x"]


def test_encode_ids_mask_and_padding(tokenizer):
    tokens = tokenizer.encode(["A red circle", ""])
    assert tokens.ids.dtype == torch.long and tokens.mask.dtype == torch.bool
    assert tokens.ids.tolist() == [[1, 2, 4, 0, 0, 0], [0] * 6]
    assert tokens.mask.tolist() == [[True] * 3 + [False] * 3, [False] * 6]
    assert tokens.unknown == [[], []]
    assert tokens.truncated == [False, False]


def test_encode_reports_unknown_words_in_order(tokenizer):
    tokens = tokenizer.encode(["a purple circle wobbling on purple", "blue square"])
    assert tokens.unknown == [["purple", "wobbling", "purple"], []]
    assert tokens.ids[0].tolist() == [1, 4, 9, 0, 0, 0]


def test_encode_reports_truncation(tokenizer):
    tokens = tokenizer.encode(
        ["a red circle moving left on a blue background", "a red circle moving left on"]
    )
    assert tokens.truncated == [True, False]
    assert tokens.ids[0].tolist() == [1, 2, 4, 6, 7, 9]
    assert tokens.mask[0].all()


def test_encode_rejects_a_bare_string(tokenizer):
    with pytest.raises(TypeError, match="list of prompts"):
        tokenizer.encode("a red circle")


@pytest.mark.parametrize(
    "vocab, max_length, message",
    [
        ([], 4, "empty"),
        (["red", "Red"], 4, "lower-case"),
        (["red", "red"], 4, "duplicate"),
        (["red"], 0, "max_length"),
    ],
)
def test_tokenizer_validates_arguments(vocab, max_length, message):
    with pytest.raises(ValueError, match=message):
        WordTokenizer(vocab, max_length)


def test_tokenizer_save_load(tokenizer, tmp_path):
    tokenizer.save(tmp_path / "tokenizer.json")
    loaded = WordTokenizer.load(tmp_path / "tokenizer.json")
    assert loaded.vocab == VOCAB and loaded.max_length == 6
    assert json.loads((tmp_path / "tokenizer.json").read_text())["vocab"] == VOCAB


def test_encoder_output_shape_and_zero_padding(tokenizer, encoder):
    tokens = tokenizer.encode(["a red circle", "blue", "nothing known here"])
    out = encoder(tokens.ids, tokens.mask)
    assert out.shape == (3, 6, 16)
    assert torch.isfinite(out).all()
    assert (out[~tokens.mask] == 0).all()
    assert (out[tokens.mask].abs().sum(-1) > 0).all()


def test_empty_prompt_gives_zeros_and_finite_gradients(tokenizer, encoder):
    tokens = tokenizer.encode(["", "red square"])
    out = encoder.train()(tokens.ids, tokens.mask)
    assert (out[0] == 0).all()
    out.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in encoder.parameters() if p.grad is not None)


def test_embedding_does_not_depend_on_the_batch(tokenizer, encoder):
    text = TextEncoder(tokenizer, encoder)
    alone, _ = text.encode_prompts(["blue square moving right"])
    prompts = ["a red circle on a blue background", "blue square moving right", ""]
    batched, unknown = text.encode_prompts(prompts)
    torch.testing.assert_close(batched[1:2], alone, rtol=1e-5, atol=1e-6)
    assert unknown == [[], [], []]


def test_encode_prompts_returns_unknown_words(tokenizer, encoder):
    embeddings, unknown = TextEncoder(tokenizer, encoder).encode_prompts(["a green circle"])
    assert embeddings.shape == (1, 6, 16)
    assert unknown == [["green"]]


def test_save_load_round_trip(tokenizer, encoder, tmp_path):
    save_text_encoder(tmp_path / "text", tokenizer, encoder)
    assert {p.name for p in (tmp_path / "text").iterdir()} == {
        "tokenizer.json",
        "text_encoder.safetensors",
        "text_encoder_config.json",
    }
    loaded_tokenizer, loaded_encoder = load_text_encoder(tmp_path / "text")
    assert not loaded_encoder.training
    prompts = ["a red circle moving left", "blue background"]
    expected, _ = TextEncoder(tokenizer, encoder).encode_prompts(prompts)
    actual, _ = TextEncoder.from_folder(tmp_path / "text").encode_prompts(prompts)
    assert torch.equal(expected, actual)
    assert loaded_tokenizer.vocab == tokenizer.vocab
    assert loaded_encoder.config == encoder.config


def test_load_reports_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        load_text_encoder(tmp_path)


def test_text_encoder_checks_sizes_match(tokenizer):
    with pytest.raises(ValueError, match="vocab_size"):
        TextEncoder(tokenizer, ToyTextEncoder(tokenizer.vocab_size + 1, dim=8, max_length=6))
    with pytest.raises(ValueError, match="divisible"):
        ToyTextEncoder(tokenizer.vocab_size, dim=10, max_length=6, num_heads=4)
