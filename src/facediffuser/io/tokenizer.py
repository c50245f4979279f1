"""The CLIP BPE tokenizer that ships with the package, for offline use.

``data/clip_tokenizer/{vocab,merges}`` are derived from OpenAI CLIP's ``bpe_simple_vocab_16e6.txt.gz``
(MIT licence, see ``data/clip_tokenizer/LICENSE``): the 256 byte symbols, the same with ``</w>``, the 48,894 merges,
then ``<|startoftext|>`` and ``<|endoftext|>``: 49,408 tokens, the vocabulary of every SD1.x text encoder.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from transformers import CLIPTokenizer


def load_clip_tokenizer(model_max_length: int = 77) -> CLIPTokenizer:
    """The SD1.x tokenizer (padding with ``<|endoftext|>``, as SD1.5 does), built from package data."""
    folder = resources.files("facediffuser") / "data" / "clip_tokenizer"
    vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    lines = (folder / "merges.txt").read_text(encoding="utf-8").splitlines()
    merges = [tuple(line.split()) for line in lines[1:] if line]
    return CLIPTokenizer(
        vocab=vocab,
        merges=merges,
        bos_token="<|startoftext|>",
        eos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        model_max_length=model_max_length,
    )


TOKENIZER_FILES = ("tokenizer.json", "vocab.json")


def has_tokenizer_files(folder: str | Path) -> bool:
    """Whether ``folder`` holds a saved tokenizer (``tokenizer.json``, or ``vocab.json`` with its merges)."""
    return any((Path(folder) / name).is_file() for name in TOKENIZER_FILES)


def load_folder_tokenizer(folder: str | Path, model_max_length: int) -> CLIPTokenizer:
    """The CLIP tokenizer saved in a model folder, or the project's (:func:`load_clip_tokenizer`) when the folder
    holds none: the world's CLIP as ``mini ship`` stores it, whose tokenizer is the project's. (``from_pretrained`` on
    a folder without tokenizer files would give an empty tokenizer that knows no word, and no length limit.)"""
    if has_tokenizer_files(folder):
        return CLIPTokenizer.from_pretrained(folder)
    return load_clip_tokenizer(model_max_length=model_max_length)
