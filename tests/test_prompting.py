"""Placeholder handling with the real CLIP tokenizer."""

import logging

import pytest

from facediffuser.io.tokenizer import load_clip_tokenizer
from facediffuser.prompting import check_placeholders, strip_placeholders, tokenize_prompt


@pytest.fixture(scope="module")
def tokenizer():
    return load_clip_tokenizer()


def test_known_sd_token_ids(tokenizer):
    # The ids every SD1.x tokenizer gives (bos, a, photo, of, a, man, riding, a, horse, eos).
    ids = tokenizer("a photo of a man riding a horse").input_ids
    assert ids == [49406, 320, 1125, 539, 320, 786, 6765, 320, 4558, 49407]


@pytest.mark.parametrize(
    "prompt,nouns",
    [
        ("a man <|image|> riding a horse", ["man"]),
        ("a man <|image|> and a woman <|image|> at a cafe", ["man", "woman"]),
        ("A photo of a girl<|image|>, smiling", ["girl"]),
        ("a woman <|image|>", ["woman"]),
    ],
)
def test_placeholders_removed_and_class_nouns_marked(tokenizer, prompt, nouns):
    tokenized = tokenize_prompt(tokenizer, prompt)
    stripped = strip_placeholders(prompt)
    expected = tokenizer(stripped, padding="max_length", max_length=77, truncation=True).input_ids
    assert tokenized.input_ids == expected
    assert tokenized.text == stripped
    marked = [tokenizer.convert_ids_to_tokens(tokenized.input_ids[i]) for i in tokenized.subject_token_indices]
    assert marked == [n + "</w>" for n in nouns]


def test_custom_placeholder(tokenizer):
    tokenized = tokenize_prompt(tokenizer, "a man [P] on a horse", placeholder="[P]")
    assert tokenizer.convert_ids_to_tokens(tokenized.input_ids[tokenized.subject_token_indices[0]]) == "man</w>"


def test_placeholder_without_a_noun_is_refused(tokenizer):
    with pytest.raises(ValueError, match="no word before it"):
        tokenize_prompt(tokenizer, "<|image|> riding a horse")


def test_long_prompt_warns_with_the_cut_text(tokenizer, caplog):
    prompt = "a man <|image|> " + "very " * 80 + "tall"
    with caplog.at_level(logging.WARNING):
        tokenized = tokenize_prompt(tokenizer, prompt)
    assert len(tokenized.input_ids) == 77 and tokenized.input_ids[-1] == tokenizer.eos_token_id
    assert "was cut" in caplog.text and "tall" in caplog.text


def test_placeholder_lost_to_truncation_is_an_error(tokenizer):
    with pytest.raises(ValueError, match="beyond the 77-token limit"):
        tokenize_prompt(tokenizer, "very " * 80 + "a man <|image|>")


@pytest.mark.parametrize(
    "prompt", ["a man <|image|><|image|>", "a man <|image|> <|image|>", "a man <|image|>, <|image|> at sea"]
)
def test_adjacent_placeholders_are_refused_with_what_to_write(tokenizer, prompt):
    # Without the refusal both photos would land on "man", the second overwriting the first, with exit 0.
    with pytest.raises(ValueError, match="no word between them") as caught:
        tokenize_prompt(tokenizer, prompt)
    assert "a man <|image|> and a woman <|image|>" in str(caught.value)
    with pytest.raises(ValueError, match="no word between them"):
        check_placeholders(prompt)


def test_check_placeholders_counts_well_placed_ones():
    assert check_placeholders("a man <|image|> and a woman<|image|>, smiling") == 2
    assert check_placeholders("a landscape") == 0
    assert check_placeholders("un homme <|image|> et une femme <|image|>") == 2
