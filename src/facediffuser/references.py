"""The pipeline's prompt and reference arguments, read and checked before any model runs.

A prompt holds one placeholder after every person's class noun (``"a man <|image|> riding a horse"``); each
placeholder needs one reference: a PIL image, a path, a folder of photos, or a list of images/paths of the same person.
"""

from __future__ import annotations

from typing import Any

import PIL.Image

from .images import load_person
from .prompting import count_placeholders


def normalize_prompts(prompt: str | list[str]) -> tuple[list[str], bool]:
    """``(prompts, prompt_is_batch)``: a single prompt becomes a list of one."""
    prompt_is_batch = not isinstance(prompt, str)
    prompts = list(prompt) if prompt_is_batch else [prompt]
    if not prompts:
        raise ValueError("`prompt` is an empty list.")
    return prompts, prompt_is_batch


def normalize_negative_prompts(
    negative_prompt: str | list[str] | None, prompts: list[str], placeholder: str
) -> list[str]:
    """One negative prompt (the guidance's ``0``) per prompt; ``None`` is the empty prompt, as in Stable Diffusion."""
    if negative_prompt is None:
        negatives = [""] * len(prompts)
    elif isinstance(negative_prompt, str):
        negatives = [negative_prompt] * len(prompts)
    else:
        negatives = list(negative_prompt)
        if len(negatives) != len(prompts):
            raise ValueError(f"Got {len(negatives)} negative prompts for {len(prompts)} prompts.")
    for negative in negatives:
        if count_placeholders(negative, placeholder):
            raise ValueError(f"The negative prompt {negative!r} must not contain the placeholder {placeholder!r}.")
    return negatives


def normalize_references(
    prompts: list[str], reference_images: Any, prompt_is_batch: bool, placeholder: str
) -> list[list[list[PIL.Image.Image]]]:
    """Reads and checks ``reference_images`` against the placeholders: ``[prompt][person][photo]``.

    For a single prompt, ``reference_images`` holds one entry per placeholder (a single image is accepted for a single
    placeholder). For a list of prompts, it holds one such list per prompt. An entry is a PIL image, a path, a folder
    (all its photos) or a list of images/paths: several photos of one person are encoded separately and their
    embeddings averaged.
    """
    counts = [count_placeholders(p, placeholder) for p in prompts]
    if reference_images is None:
        if any(counts):
            raise ValueError(
                f"The prompt has {max(counts)} placeholder(s) {placeholder!r} but no `reference_images` were "
                "given: pass one reference per placeholder."
            )
        return [[] for _ in prompts]
    if prompt_is_batch:
        if not isinstance(reference_images, (list, tuple)) or len(reference_images) != len(prompts):
            raise ValueError(
                f"With {len(prompts)} prompts, `reference_images` must be a list of {len(prompts)} entries, one "
                "list of references per prompt."
            )
        per_prompt = list(reference_images)
    else:
        per_prompt = [reference_images]
    out = []
    for prompt, count, refs in zip(prompts, counts, per_prompt):
        if refs is None:
            refs = []
        elif not isinstance(refs, (list, tuple)):
            refs = [refs]
        if len(refs) != count:
            raise ValueError(
                f"The prompt {prompt!r} has {count} placeholder(s) {placeholder!r} but {len(refs)} "
                "reference(s) were given: give exactly one reference (an image, a folder, or a list of photos) "
                "per placeholder, in order."
            )
        out.append([load_person(r) for r in refs])
    return out
