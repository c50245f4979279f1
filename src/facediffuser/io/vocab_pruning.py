"""Pruning a BPE tokenizer and its CLIP text tower to the words of a list of texts, exactly.

A CLIP text tower trained on a narrow language uses a few hundred rows of its 49,408-row token table; the rest are
weights a pipeline folder ships for nothing. :func:`prune_vocabulary` keeps what the given texts need, by these
rules, and :func:`check_pruning` proves the result gives what the full pair gives:

1. **Words** of a text are what the tokenizer's own normalizer and pre-tokenizer make of it (lower case, split into
   letter runs, single digits and punctuation runs), around the placeholders as
   :func:`facediffuser.prompting.tokenize_prompt` splits a prompt (:func:`text_words`).
2. **Kept tokens:** the 256 byte symbols and the same 256 with ``</w>`` (so that any text still tokenizes, byte by
   byte at worst), ``<|startoftext|>`` and ``<|endoftext|>``, and every token along the BPE path of every word of the
   texts: the word's final tokens and the result of every merge applied on the way. **Kept merges:** every
   merge applied on those paths, in their original relative order (rank). Everything else is dropped.
3. **Why the texts tokenize as before:** byte-pair encoding splits a word into byte symbols and then, at
   each step, applies the lowest-ranked merge among the adjacent pairs. On a word of the texts, the merge the full
   set picks is on the word's path, so it is in the subset; every other candidate of the subset is a merge of the
   full set, ranked after it there and so also in the subset, whose order is the original one. Each step picks the
   same merge: the same tokens. :func:`bpe_path` computes the paths and checks each against the tokenizer's own BPE.
4. **The new ids** number the kept tokens in their original order (bytes, merges, then the two special tokens,
   last as before: ``<|endoftext|>`` stays the highest id). The tokenizer is a standard transformers
   :class:`~transformers.CLIPTokenizer` (``vocab.json`` + ``merges.txt``); the text encoder a standard
   :class:`~transformers.CLIPTextModel` whose ``vocab_size`` is the kept count, whose token-embedding row ``i`` is
   the old row of the ``i``-th kept token, and whose ``bos``/``eos``/``pad_token_id`` are the new ids of the same
   tokens. transformers' CLIP text tower pools at the first ``eos_token_id`` of each row (any id but the legacy 2),
   so the pooled output is taken at the same position; nothing else reads the ids. Every other weight is unchanged.
5. **The check** (:func:`check_pruning`): every text gives the same token strings through both tokenizers; a sample
   of them that holds every word gives exactly (``torch.equal``) the same ``last_hidden_state`` and
   ``pooler_output`` through both text encoders, tokenized as the pipeline tokenizes
   (:func:`~facediffuser.prompting.tokenize_prompts`); and texts outside them (:data:`OUTSIDE_TEXTS`) tokenize with
   no more unknown tokens than before (none: every byte is kept), decode as through the full tokenizer, and encode.
   Otherwise :class:`PruningError`.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from typing import Any

END_OF_WORD = "</w>"
SPECIAL_TOKENS = ("<|startoftext|>", "<|endoftext|>")
OUTSIDE_TEXTS = (
    "an astronaut riding a horse on the moon",
    "A man in a purple sweater, with glasses and a kite!",
    "Ünïcödé café, 東京, 1234 ??? émoji 🚀",
    "<|startoftext|>two people in the fog<|endoftext|>",
    "a woman <|image|> on a beach at night",
    "",
)
CHECK_BATCH = 64


class PruningError(ValueError):
    """The pruned tokenizer or text encoder does not give what the full ones give."""


@dataclass
class PrunedVocabulary:
    """A pruned tokenizer and text encoder, and ``old_ids[new id]``: the old id of each kept token."""

    tokenizer: Any
    text_encoder: Any
    old_ids: list[int]

    @property
    def size(self) -> int:
        return len(self.old_ids)


# ------------------------------------------------------------------------------------------------ words and BPE
def text_words(tokenizer, text: str) -> list[str]:
    """The words BPE sees in ``text``: the tokenizer's normalizer and pre-tokenizer applied to each piece between
    placeholders, as :func:`~facediffuser.prompting.tokenize_prompt` splits a prompt."""
    from ..prompting import DEFAULT_PLACEHOLDER

    backend = tokenizer.backend_tokenizer
    words = []
    for piece in text.split(DEFAULT_PLACEHOLDER):
        normalized = backend.normalizer.normalize_str(piece) if backend.normalizer is not None else piece
        words += [w for w, _ in backend.pre_tokenizer.pre_tokenize_str(normalized)]
    return words


def bpe_model(tokenizer) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """``(vocab, merges)`` of a CLIP BPE tokenizer; ``ValueError`` for any other kind."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    model = json.loads(backend.to_str())["model"] if backend is not None else {}
    if model.get("type") != "BPE" or model.get("end_of_word_suffix") != END_OF_WORD:
        raise ValueError(f"Only a CLIP BPE tokenizer can be pruned, not {type(tokenizer).__name__}.")
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    return dict(model["vocab"]), merges


def bpe_path(word: str, ranks: dict[tuple[str, str], int]) -> tuple[list[str], list[tuple[str, str]]]:
    """``(tokens, merges applied)`` of byte-pair encoding ``word`` (byte-level symbols), as CLIP does: the last
    symbol carries ``</w>``; each step merges every occurrence of the lowest-ranked adjacent pair, left to right."""
    symbols = [*word[:-1], word[-1] + END_OF_WORD] if word else []
    applied = []
    while len(symbols) > 1:
        candidates = {pair for pair in zip(symbols, symbols[1:]) if pair in ranks}
        if not candidates:
            break
        best = min(candidates, key=ranks.__getitem__)
        applied.append(best)
        merged, i = [], 0
        while i < len(symbols):
            if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                merged.append(best[0] + best[1])
                i += 2
            else:
                merged.append(symbols[i])
                i += 1
        symbols = merged
    return symbols, applied


def byte_symbols() -> list[str]:
    """The 256 byte-level symbols and the same with ``</w>``."""
    from tokenizers import pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    return alphabet + [s + END_OF_WORD for s in alphabet]


def kept_vocabulary(tokenizer, texts: list[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """``(tokens, merges)`` to keep (rule 2): tokens in their old id order, merges in their old rank order."""
    vocab, merges = bpe_model(tokenizer)
    ranks = {pair: rank for rank, pair in enumerate(merges)}
    keep = set(byte_symbols()) | set(SPECIAL_TOKENS)
    missing = sorted(keep - set(vocab))
    if missing:
        raise ValueError(f"The tokenizer lacks {len(missing)} byte symbols or special tokens, e.g. {missing[:3]}.")
    used: set[tuple[str, str]] = set()
    backend = tokenizer.backend_tokenizer
    for word in sorted({w for text in texts for w in text_words(tokenizer, text)}):
        tokens, applied = bpe_path(word, ranks)
        theirs = [t.value for t in backend.model.tokenize(word)]
        if tokens != theirs:
            raise ValueError(f"BPE of {word!r} gives {theirs} in the tokenizer but {tokens} here.")
        keep.update(tokens)
        keep.update(a + b for a, b in applied)
        used.update(applied)
    return sorted(keep, key=vocab.__getitem__), sorted(used, key=ranks.__getitem__)


# ------------------------------------------------------------------------------------------------ pruning
def pruned_tokenizer(tokenizer, tokens: list[str], merges: list[tuple[str, str]]):
    """A :class:`~transformers.CLIPTokenizer` of ``tokens`` (new ids in list order) and ``merges``, with
    ``tokenizer``'s special tokens and limits."""
    from transformers import CLIPTokenizer

    extra = {}
    for name in ("bos_token", "eos_token", "unk_token", "pad_token"):
        value = getattr(tokenizer, name, None)
        if value is not None:
            extra[name] = str(value)
    return CLIPTokenizer(
        vocab={token: i for i, token in enumerate(tokens)},
        merges=list(merges),
        model_max_length=tokenizer.model_max_length,
        padding_side=tokenizer.padding_side,
        truncation_side=tokenizer.truncation_side,
        **extra,
    )


def pruned_text_encoder(text_encoder, old_ids: list[int], token_ids: dict[str, int]):
    """``text_encoder`` with embedding row ``i`` the old row ``old_ids[i]``, ``vocab_size = len(old_ids)``, and
    ``bos``/``eos``/``pad_token_id`` the new ids in ``token_ids`` (each ``"bos"``, ``"eos"``, ``"pad"``)."""
    import torch

    config = copy.deepcopy(text_encoder.config)
    config.vocab_size = len(old_ids)
    for name, new_id in token_ids.items():
        setattr(config, f"{name}_token_id", new_id)
    pruned = type(text_encoder)(config).to(dtype=text_encoder.dtype).eval()
    state = text_encoder.state_dict()
    table = text_encoder.get_input_embeddings().weight
    keys = [name for name, p in text_encoder.named_parameters() if p is table]
    if len(keys) != 1 or keys[0] not in state:
        raise ValueError(f"Cannot tell the token-embedding table among the text encoder's weights: {keys}.")
    index = torch.tensor(old_ids, dtype=torch.long, device=table.device)
    state[keys[0]] = table.detach().index_select(0, index).clone()
    pruned.load_state_dict(state, strict=True)
    # transformers 5 writes a loaded model back in the layout it was read from (``text_model.`` keys for a folder
    # written as transformers 4 writes it, as the shipped pipeline's is): the pruned one keeps the source's layout.
    if hasattr(text_encoder, "_weight_conversions"):
        pruned._weight_conversions = copy.copy(text_encoder._weight_conversions)
    return pruned.to(device=table.device)


def prune_vocabulary(tokenizer, text_encoder, texts: list[str]) -> PrunedVocabulary:
    """The tokenizer and text encoder pruned to the tokens of ``texts`` and the bytes (rules 2-4). ``ValueError``
    when the text encoder's special ids are not the tokenizer's."""
    config = text_encoder.config
    old = {"bos": tokenizer.bos_token_id, "eos": tokenizer.eos_token_id, "pad": tokenizer.pad_token_id}
    for name, value in old.items():
        if getattr(config, f"{name}_token_id", None) != value:
            raise ValueError(
                f"The text encoder's {name}_token_id is {getattr(config, f'{name}_token_id', None)}, the tokenizer's "
                f"{name} token is {value}: pruning would move what the text encoder pools on."
            )
    if config.vocab_size != len(tokenizer):
        raise ValueError(f"The text encoder has {config.vocab_size} token rows, the tokenizer {len(tokenizer)} tokens.")
    tokens, merges = kept_vocabulary(tokenizer, texts)
    vocab = tokenizer.get_vocab()
    old_ids = [vocab[t] for t in tokens]
    new_tokenizer = pruned_tokenizer(tokenizer, tokens, merges)
    new_ids = {"bos": new_tokenizer.bos_token_id, "eos": new_tokenizer.eos_token_id, "pad": new_tokenizer.pad_token_id}
    return PrunedVocabulary(new_tokenizer, pruned_text_encoder(text_encoder, old_ids, new_ids), old_ids)


# ------------------------------------------------------------------------------------------------ the check
def check_pruning(
    full_tokenizer,
    full_encoder,
    tokenizer,
    encoder,
    texts: list[str],
    sample: list[str],
) -> dict[str, int]:
    """Rule 5: :class:`PruningError` unless the pruned pair gives what the full pair gives. ``texts`` must give the
    same token strings; ``sample`` exactly the same ``last_hidden_state`` and ``pooler_output``;
    :data:`OUTSIDE_TEXTS` must tokenize (no unknown token where the full one has none), decode as before and
    encode. Returns the counts checked."""
    import torch

    from ..prompting import DEFAULT_PLACEHOLDER, tokenize_prompts

    for text in texts:
        ours = _tokens(tokenizer, text)
        theirs = _tokens(full_tokenizer, text)
        if ours != theirs:
            raise PruningError(f"The pruned tokenizer splits {text!r} into {ours}, the full one into {theirs}.")
    with torch.no_grad():
        for start in range(0, len(sample), CHECK_BATCH):
            batch = sample[start : start + CHECK_BATCH]
            full_ids, _ = tokenize_prompts(full_tokenizer, batch)
            ids, _ = tokenize_prompts(tokenizer, batch)
            full_out = full_encoder(full_ids.to(full_encoder.device))
            out = encoder(ids.to(encoder.device))
            for name in ("last_hidden_state", "pooler_output"):
                same = torch.eq(getattr(out, name), getattr(full_out, name)).flatten(1).all(1)
                if not bool(same.all()):
                    text = batch[int((~same).nonzero()[0])]
                    raise PruningError(f"The pruned text encoder's {name} of {text!r} differs from the full one's.")
        unknown = tokenizer.unk_token_id
        for text in OUTSIDE_TEXTS:
            ids, full = tokenizer(text).input_ids, full_tokenizer(text).input_ids
            if ids.count(unknown) > full.count(full_tokenizer.unk_token_id):
                spelled = tokenizer.convert_ids_to_tokens(ids)
                raise PruningError(f"The pruned tokenizer cannot spell {text!r}: {spelled}.")
            if tokenizer.decode(ids) != full_tokenizer.decode(full):
                raise PruningError(f"The pruned tokenizer reads {text!r} as {tokenizer.decode(ids)!r}.")
            tokens, _ = tokenize_prompts(tokenizer, [text.replace(DEFAULT_PLACEHOLDER, "")])
            encoder(tokens.to(encoder.device))
    return {"texts": len(texts), "encoded": len(sample), "outside": len(OUTSIDE_TEXTS)}


def _tokens(tokenizer, text: str) -> list[str]:
    """The token strings of ``text`` as the pipeline tokenizes it (placeholders out), with BOS, EOS and padding."""
    from ..prompting import tokenize_prompt

    return tokenizer.convert_ids_to_tokens(tokenize_prompt(tokenizer, text).input_ids)
