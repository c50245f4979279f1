"""The mini pipeline's text tower pruned to the world's vocabulary (:mod:`facediffuser.lab.mini.vocab`), on a tiny
seeded text encoder with the project's full CLIP tokenizer: the world's texts give exactly what the full pair gives, any
other text still tokenizes and encodes, and the check that ``mini ship`` runs catches a broken pruning."""

from __future__ import annotations

import pytest
import torch
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from facediffuser.io.tokenizer import load_clip_tokenizer
from facediffuser.lab.mini import vocab as V
from facediffuser.lab.world import attributes as A
from facediffuser.prompting import tokenize_prompts

README_PROMPT = "a woman <|image|> in a yellow sweater on a beach at night"


@pytest.fixture(scope="module")
def full() -> tuple[CLIPTokenizer, CLIPTextModel]:
    """The project's tokenizer and a tiny seeded CLIP text tower over its 49,408 tokens (as the world's CLIP's)."""
    torch.manual_seed(0)
    config = CLIPTextConfig(
        vocab_size=49408, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
    )  # fmt: skip
    return load_clip_tokenizer(), CLIPTextModel(config).eval()


@pytest.fixture(scope="module")
def pruned(full) -> V.PrunedVocabulary:
    return V.prune_vocabulary(*full)


def world_words(tokenizer) -> set[str]:
    return {w for text in V.world_texts() for w in V.text_words(tokenizer, text)}


def test_the_worlds_words_are_those_of_its_vocabulary_and_the_check_sample_holds_them_all(full):
    tokenizer, _ = full
    words = world_words(tokenizer)
    values = [*A.GENDERS, *A.SKIN_TONES, *A.HAIR_COLOURS, *A.HAIR_STYLES, *A.FACE_SHAPES, *A.CLOTHING_COLOURS]
    values += [*A.GARMENTS, "beard", "moustache", "glasses", "sunglasses", "hair", "skin", "face", ","]
    phrases = [*A.PLACES.values(), *A.TIMES.values(), *A.WEATHERS.values(), *A.OBJECTS.values()]
    joins = {"a", "an", "in", "with", "and"}  # person_phrase, looks_phrase and caption put these between the values
    assert set(values) | {w for p in phrases for w in p.split()} | joins == words
    assert set(V.text_words(tokenizer, README_PROMPT)) <= words
    sample = V.check_texts(tokenizer)
    assert {w for text in sample for w in V.text_words(tokenizer, text)} == words and len(sample) < 400


def test_the_pruned_tokenizer_keeps_the_bytes_the_paths_and_the_special_tokens_last(full, pruned):
    tokenizer, _ = full
    vocab = pruned.tokenizer.get_vocab()
    assert set(V.byte_symbols()) <= set(vocab) and len(V.byte_symbols()) == 512
    assert pruned.size == len(vocab) == pruned.text_encoder.config.vocab_size < 1000
    assert pruned.tokenizer.convert_ids_to_tokens([pruned.size - 2, pruned.size - 1]) == list(V.SPECIAL_TOKENS)
    assert pruned.old_ids == sorted(pruned.old_ids)  # the old order: bytes, merges by rank, then the two specials
    merges = V.bpe_model(pruned.tokenizer)[1]
    ranks = {pair: rank for rank, pair in enumerate(V.bpe_model(tokenizer)[1])}
    assert [ranks[m] for m in merges] == sorted(ranks[m] for m in merges)
    config = pruned.text_encoder.config
    assert (config.bos_token_id, config.eos_token_id, config.pad_token_id) == (
        pruned.tokenizer.bos_token_id, pruned.tokenizer.eos_token_id, pruned.tokenizer.pad_token_id,
    ) == (pruned.size - 2, pruned.size - 1, pruned.size - 1)  # fmt: skip


@pytest.mark.slow
def test_the_pruned_text_encoder_equals_the_full_one_exactly_on_the_worlds_texts(full, pruned):
    counts = V.check_pruning(*full, pruned.tokenizer, pruned.text_encoder)
    assert counts["texts"] == len(V.world_texts()) > 1000 and counts["encoded"] > 200
    texts = [README_PROMPT, "a man with spiky pink hair, dark skin, sunglasses, a moustache and a wide face"]
    with torch.no_grad():
        ours = pruned.text_encoder(tokenize_prompts(pruned.tokenizer, texts)[0])
        theirs = full[1](tokenize_prompts(full[0], texts)[0])
    assert torch.equal(ours.last_hidden_state, theirs.last_hidden_state)
    assert torch.equal(ours.pooler_output, theirs.pooler_output)


def test_the_check_fails_when_a_merge_on_a_path_is_dropped_a_row_moves_or_the_eos_id_is_stale(full, pruned):
    tokenizer, encoder = full
    texts = [README_PROMPT, "a man in a red shirt"]
    vocab, merges = V.bpe_model(tokenizer)
    tokens = pruned.tokenizer.convert_ids_to_tokens(range(pruned.size))
    kept = V.bpe_model(pruned.tokenizer)[1]
    _, path = V.bpe_path("sweater", {pair: rank for rank, pair in enumerate(merges)})
    assert len(path) > 1 and set(path) <= set(kept)
    # A merge on the path of "sweater" dropped (all tokens kept): the word is split otherwise.
    without = V.pruned_tokenizer(tokenizer, tokens, [m for m in kept if m != path[0]])
    with pytest.raises(V.PruningError, match="sweater"):
        V.check_pruning(tokenizer, encoder, without, pruned.text_encoder, texts=texts, sample=texts)
    # Two rows of the table swapped: the same tokens, other features.
    swapped = list(pruned.old_ids)
    a, b = (tokens.index(t) for t in ("sweater</w>", "beach</w>"))
    swapped[a], swapped[b] = swapped[b], swapped[a]
    ids = {"bos": pruned.size - 2, "eos": pruned.size - 1, "pad": pruned.size - 1}
    moved = V.pruned_text_encoder(encoder, swapped, ids)
    with pytest.raises(V.PruningError, match="last_hidden_state"):
        V.check_pruning(tokenizer, encoder, pruned.tokenizer, moved, texts=texts, sample=texts)
    # The config's eos id left at the old one: the tower pools at the wrong place.
    stale = V.pruned_text_encoder(encoder, pruned.old_ids, {"bos": pruned.size - 2, "pad": pruned.size - 1})
    assert stale.config.eos_token_id == 49407
    with pytest.raises(V.PruningError, match="pooler_output"):
        V.check_pruning(tokenizer, encoder, pruned.tokenizer, stale, texts=texts, sample=texts)


def test_the_pruned_pair_round_trips_through_save_and_from_pretrained_and_prunes_to_itself(full, pruned, tmp_path):
    from facediffuser.lab.mini.ship import save_tokenizer_compact

    save_tokenizer_compact(pruned.tokenizer, tmp_path / "tokenizer")
    pruned.text_encoder.save_pretrained(tmp_path / "text_encoder")
    assert sorted(p.name for p in (tmp_path / "tokenizer").iterdir()) == [
        "merges.txt", "tokenizer_config.json", "vocab.json",
    ]  # fmt: skip
    tokenizer = CLIPTokenizer.from_pretrained(tmp_path / "tokenizer")
    encoder = CLIPTextModel.from_pretrained(tmp_path / "text_encoder").eval()
    assert tokenizer.get_vocab() == pruned.tokenizer.get_vocab() and tokenizer.model_max_length == 77
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (
        pruned.size - 2, pruned.size - 1, pruned.size - 1,
    )  # fmt: skip
    assert encoder.config.vocab_size == pruned.size and encoder.config.eos_token_id == pruned.size - 1
    texts = V.check_texts(tokenizer)[::10]
    V.check_pruning(*full, tokenizer, encoder, texts=texts, sample=texts)
    # Pruning the pruned pair again (a build started from the shipped stages) keeps all of it, as it is.
    again = V.prune_vocabulary(tokenizer, encoder)
    assert again.old_ids == list(range(pruned.size)) and again.tokenizer.get_vocab() == tokenizer.get_vocab()


@pytest.mark.slow
def test_an_out_of_world_word_still_tokenizes_byte_by_byte_and_encodes(full, pruned):
    tokenizer, _ = full
    assert "astronaut" not in world_words(tokenizer)
    text = "An astronaut <|image|> on the Moon, café 🚀"
    ids, marks = tokenize_prompts(pruned.tokenizer, [text])
    full_ids, full_marks = tokenize_prompts(tokenizer, [text])

    def body(row: torch.Tensor, eos: int) -> list[int]:  # between BOS and the first EOS
        return row[1 : int((row == eos).nonzero()[0])].tolist()

    ours, theirs = body(ids[0], pruned.size - 1), body(full_ids[0], 49407)
    assert pruned.tokenizer.unk_token_id not in ours
    assert pruned.tokenizer.decode(ours) == tokenizer.decode(theirs) == "an astronaut on the moon , café 🚀"
    assert len(ours) > len(theirs)  # in smaller pieces than the full vocabulary's
    assert marks == [[len(pruned.tokenizer("an astronaut", add_special_tokens=False).input_ids)]]
    with torch.no_grad():
        out = pruned.text_encoder(ids)
    assert out.last_hidden_state.shape == (1, 77, 16) and torch.isfinite(out.pooler_output).all()
    # The BPE paths here are the tokenizer's own, in and out of the world.
    ranks = {pair: rank for rank, pair in enumerate(V.bpe_model(tokenizer)[1])}
    for word in ("astronaut", "sweater", "moustache", "a", ","):
        assert V.bpe_path(word, ranks)[0] == [t.value for t in tokenizer.backend_tokenizer.model.tokenize(word)]


def test_a_text_encoder_whose_special_ids_are_not_the_tokenizers_is_not_pruned(full):
    tokenizer, encoder = full
    other = CLIPTextModel(CLIPTextConfig(**{**encoder.config.to_dict(), "eos_token_id": 2}))
    with pytest.raises(ValueError, match="eos_token_id is 2.*pools on"):
        V.prune_vocabulary(tokenizer, other, texts=["a man"])


def test_the_pruned_text_encoder_is_written_with_the_weight_names_it_was_read_with(full, tmp_path):
    """A folder with transformers 4's ``text_model.`` names (the shipped pipeline's) stays so once pruned."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    tokenizer, encoder = full
    legacy = tmp_path / "legacy"
    encoder.config.save_pretrained(legacy)
    state = {f"text_model.{k}": v.contiguous() for k, v in encoder.state_dict().items()}
    save_file(state, legacy / "model.safetensors", metadata={"format": "pt"})
    pruned = V.prune_vocabulary(tokenizer, CLIPTextModel.from_pretrained(legacy), texts=["a man"])
    pruned.text_encoder.save_pretrained(tmp_path / "pruned")
    with safe_open(str(tmp_path / "pruned" / "model.safetensors"), framework="pt") as handle:
        assert set(handle.keys()) == set(state)  # noqa: SIM118 (safe_open is not a mapping)
