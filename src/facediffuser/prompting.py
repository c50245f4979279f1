"""Placeholder handling: where each person sits in the prompt.

A prompt names each person with a class noun followed by a placeholder, ``"a man <|image|> and a woman <|image|>"``.
Tokenization removes the placeholders from the token ids and marks the token just before each one (the class noun);
the ``k``-th marked token receives the ``k``-th person's reference embedding. The ids are exactly those of the prompt
with the placeholders removed, so the TDM and the SDM read the same text (docs/method.md,
The two models and Guidance responses).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

logger = logging.getLogger(__name__)

DEFAULT_PLACEHOLDER = "<|image|>"


@dataclass(frozen=True)
class TokenizedPrompt:
    """One prompt, tokenized with its placeholders removed.

    Attributes:
        input_ids: ``max_length`` ids: BOS, the prompt's tokens, EOS, padding.
        subject_token_indices: index in ``input_ids`` of each placeholder's class-noun token, in prompt order.
        text: the prompt with its placeholders removed (what the TDM draws, and what PC metrics score).
    """

    input_ids: list[int]
    subject_token_indices: list[int]
    text: str


def count_placeholders(prompt: str, placeholder: str = DEFAULT_PLACEHOLDER) -> int:
    return prompt.count(placeholder)


def check_placeholders(prompt: str, placeholder: str = DEFAULT_PLACEHOLDER) -> int:
    """Checks where the placeholders stand and returns how many there are.

    Each placeholder must follow a word of its own (the person's class noun). Raises ``ValueError`` for a placeholder
    at the very start of the prompt, and for two placeholders with no word between them (``"a man <|image|>
    <|image|>"``), which would put both people on the same token.
    """
    if not placeholder:
        raise ValueError("The placeholder string must not be empty.")
    segments = prompt.split(placeholder)
    for k, before in enumerate(segments[:-1]):
        if any(ch.isalnum() for ch in before):
            continue
        if k == 0:
            raise ValueError(
                f"Placeholder 1 in {prompt!r} has no word before it. Put it right after the person's class noun, "
                f"e.g. 'a man {placeholder} riding a horse'."
            )
        raise ValueError(
            f"Placeholders {k} and {k + 1} in {prompt!r} have no word between them, so both people would be drawn "
            f"on the same word. Give each person a class noun of their own, e.g. 'a man {placeholder} and a woman "
            f"{placeholder}'; for several photos of one person, write one placeholder and give a folder (or a list) "
            "of photos as that person's reference."
        )
    return len(segments) - 1


def strip_placeholders(prompt: str, placeholder: str = DEFAULT_PLACEHOLDER) -> str:
    """The prompt without placeholders, white space folded: ``"a man <|image|> at sea" -> "a man at sea"``."""
    return " ".join(prompt.replace(placeholder, " ").split())


def tokenize_prompt(
    tokenizer,
    prompt: str,
    placeholder: str = DEFAULT_PLACEHOLDER,
    max_length: int | None = None,
) -> TokenizedPrompt:
    """Tokenizes ``prompt``, removing each ``placeholder`` and marking the token before it.

    Raises:
        ValueError: a placeholder with no word before it (see :func:`check_placeholders`), or a class noun lost to
            truncation.

    Logs a warning that quotes the cut text when the prompt is longer than the tokenizer's limit.
    """
    check_placeholders(prompt, placeholder)
    max_length = max_length or tokenizer.model_max_length
    segments = prompt.split(placeholder)
    body: list[int] = []
    marks: list[int] = []
    for k, segment in enumerate(segments):
        body.extend(tokenizer(segment, add_special_tokens=False).input_ids)
        if k < len(segments) - 1:
            if not body:
                raise ValueError(
                    f"Placeholder {k + 1} in {prompt!r} has no word before it. Put it right after the person's class "
                    f"noun, e.g. 'a man {placeholder} riding a horse'."
                )
            marks.append(len(body) - 1)

    room = max_length - 2  # BOS and EOS
    if len(body) > room:
        cut = tokenizer.decode(body[room:])
        logger.warning("The prompt is longer than the text encoder's %d tokens; this part was cut: %r", max_length, cut)
        lost = [k + 1 for k, m in enumerate(marks) if m >= room]
        if lost:
            raise ValueError(
                f"Placeholder(s) {lost} of {prompt!r} fall beyond the {max_length}-token limit and would be lost. "
                "Shorten the prompt."
            )
        body = body[:room]
    ids = [tokenizer.bos_token_id, *body, tokenizer.eos_token_id]
    ids += [tokenizer.pad_token_id] * (max_length - len(ids))
    return TokenizedPrompt(ids, [m + 1 for m in marks], strip_placeholders(prompt, placeholder))


def tokenize_prompts(
    tokenizer,
    prompts: list[str],
    placeholder: str = DEFAULT_PLACEHOLDER,
    max_length: int | None = None,
) -> tuple[torch.Tensor, list[list[int]]]:
    """Batch version of :func:`tokenize_prompt`: ``(B, L)`` ids and the marked indices of each prompt."""
    tokenized = [tokenize_prompt(tokenizer, p, placeholder, max_length) for p in prompts]
    ids = torch.tensor([t.input_ids for t in tokenized], dtype=torch.long)
    return ids, [t.subject_token_indices for t in tokenized]
