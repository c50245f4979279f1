"""Vocabulary pruning of the mini pipeline's text tower: keep the tokens the world's texts use, and the bytes.

The mini pipeline's text encoder is the frozen text tower of the world's CLIP (:mod:`facediffuser.lab.world.clip`). That
CLIP was trained on the world's captions only, with its token table frozen at its seeded random values, so the only
rows of the 49,408 x 128 table that mean anything are those of the tokens the world's texts use (about a hundred);
the table is 12.6 MB of the shipped pipeline in float16, and the tokenizer's ``vocab.json`` + ``merges.txt`` 1.4 MB.
``facediffuser mini ship`` prunes both to the world's texts (:func:`prune_vocabulary`; the pruning and its check are
the product's, :mod:`facediffuser.io.vocab_pruning`, rules 2-5 there):

- **The world's texts** (:func:`world_texts`) are every text the world's CLIP text tower was trained on or is asked
   about, generated from :mod:`facediffuser.lab.world.attributes` (no word list is typed here, so they follow the
   world):
   the captions of :func:`~facediffuser.lab.world.attributes.caption` for every identity of the code
   (:func:`~facediffuser.lab.world.attributes.identity_code`) and every value of every scene attribute, clothing colour
   and garment, one and two people, with and without the looks, with the scene phrases that training leaves out
   (:func:`~facediffuser.lab.world.clip.training_caption` drops any of ``clothing``, ``object``, ``place``, ``time``,
   ``weather``); the zero-shot prompts (:func:`~facediffuser.lab.world.clip.zero_shot_prompts`) of every attribute for
   one and two people of either class noun; the benchmark prompts
   (:func:`~facediffuser.lab.world.benchmark.mini_prompt`,
   placeholders and all) for every place, time, colour and garment. Their **words** are what the tokenizer's own
   normalizer and pre-tokenizer make of them (lower case, split into letter runs, single digits and punctuation
   runs), around the placeholders as :func:`facediffuser.prompting.tokenize_prompt` splits a prompt.
- **The check** (:func:`check_pruning`, run by ``mini ship`` on the shipped float16 weights loaded in float32):
   every world text gives the same token strings through both tokenizers; a sample of them (:func:`check_texts`:
   one-person captions of every place, time and weather, with and without looks, two-person captions, zero-shot and
   benchmark prompts; together they hold every word of the world) gives exactly (``torch.equal``) the same
   ``last_hidden_state`` and ``pooler_output`` through both text encoders, tokenized as the pipeline tokenizes
   (:func:`~facediffuser.prompting.tokenize_prompts`); and texts outside the world (:data:`OUTSIDE_TEXTS`) tokenize
   with no more unknown tokens than before (none: every byte is kept), decode as through the full tokenizer, and
   encode. Otherwise :class:`PruningError`, and nothing is shipped.
"""

from __future__ import annotations

import functools
import itertools

from ...io import vocab_pruning
from ...io.vocab_pruning import (  # noqa: F401 (the generic pruning, reached here by the ship and its tests)
    END_OF_WORD,
    OUTSIDE_TEXTS,
    SPECIAL_TOKENS,
    PrunedVocabulary,
    PruningError,
    bpe_model,
    bpe_path,
    byte_symbols,
    kept_vocabulary,
    pruned_text_encoder,
    pruned_tokenizer,
    text_words,
)


def prune_vocabulary(tokenizer, text_encoder, texts: list[str] | None = None) -> PrunedVocabulary:
    """:func:`facediffuser.io.vocab_pruning.prune_vocabulary` to ``texts``, by default the world's
    (:func:`world_texts`)."""
    return vocab_pruning.prune_vocabulary(tokenizer, text_encoder, world_texts() if texts is None else texts)


def check_pruning(
    full_tokenizer, full_encoder, tokenizer, encoder, texts: list[str] | None = None, sample: list[str] | None = None
) -> dict[str, int]:
    """:func:`facediffuser.io.vocab_pruning.check_pruning` on ``texts`` (default :func:`world_texts`) and ``sample``
    (default :func:`check_texts`)."""
    texts = world_texts() if texts is None else texts
    sample = check_texts(full_tokenizer) if sample is None else sample
    return vocab_pruning.check_pruning(full_tokenizer, full_encoder, tokenizer, encoder, texts, sample)


# ------------------------------------------------------------------------------------------------ the world's texts
def world_texts() -> list[str]:
    """Every kind of text the world's CLIP text tower was trained on or asked about (rule 1), in a fixed order,
    without repeats. Benchmark prompts keep their placeholders."""
    return list(_world_texts())


@functools.lru_cache(maxsize=1)
def _world_texts() -> tuple[str, ...]:
    from ..world.attributes import GENDERS, caption

    texts = []
    for one, two, drop, looks in _scenes():
        for scene in (one, two):
            texts += [caption(scene)[0], caption(scene, looks=True)[0], caption(scene, looks=looks, drop=drop)[0]]
    texts += zero_shot_texts([[g] for g in GENDERS] + [list(pair) for pair in itertools.product(GENDERS, repeat=2)])
    texts += benchmark_texts()
    return tuple(dict.fromkeys(texts))


def check_texts(tokenizer) -> list[str]:
    """The sample the text encoders are compared on (rule 5): a one-person caption, with and without looks, of each
    place, time and weather (the object, the person and the clothing cycling), every 32nd two-person caption with
    looks, the zero-shot prompts for one man and for a woman and a man, the benchmark prompts, and, should these
    miss a word of :func:`world_texts`, the first world text with that word. About 300 texts: 77 tokens each through
    two text encoders, seconds."""
    from ..world.attributes import GENDERS, OBJECTS, caption

    scenes = list(_scenes())
    objects = len(OBJECTS)
    texts = []
    for j in range(len(_grid()) // objects):  # the grid's object varies fastest
        one = scenes[objects * j + j % objects][0]
        texts += [caption(one)[0], caption(one, looks=True)[0]]
    texts += [caption(two, looks=True)[0] for two in [s[1] for s in scenes][::32]]
    texts += zero_shot_texts([[GENDERS[0]], [GENDERS[1], GENDERS[0]]])
    texts += benchmark_texts()
    seen = {w for text in texts for w in text_words(tokenizer, text)}
    for text in world_texts():
        words = set(text_words(tokenizer, text))
        if not words <= seen:
            texts.append(text)
            seen |= words
    return list(dict.fromkeys(texts))


def _grid() -> list[tuple[str, str, str, str]]:
    from ..world.attributes import OBJECTS, PLACES, TIMES, WEATHERS

    return list(itertools.product(PLACES, TIMES, WEATHERS, OBJECTS))


def _scenes():
    """``(one-person scene, two-person scene, drop, looks)`` for ``k`` up to the longest of: the identities of the
    code, the grid of place, time, weather and object, clothing colour x garment, the sets of droppable phrases;
    each cycles, so every value of each appears."""
    from ..world.attributes import CLOTHING_COLOURS, GARMENTS, Identity, PersonSpec, SceneSpec, identity_code
    from ..world.clip import DROPPABLE

    identities = [Identity(id=k, **features) for k, features in enumerate(identity_code())]
    grid = _grid()
    wearing = list(itertools.product(CLOTHING_COLOURS, GARMENTS))
    drops = [frozenset(c) for n in range(len(DROPPABLE) + 1) for c in itertools.combinations(DROPPABLE, n)]

    def person(identity: Identity, k: int) -> PersonSpec:
        clothing, garment = wearing[k % len(wearing)]
        return PersonSpec(identity=identity, clothing=clothing, garment=garment, x=0.5, y=0.5, head=0.3)

    for k in range(max(len(identities), len(grid), len(wearing), len(drops))):
        place, time, weather, obj = grid[k % len(grid)]
        # strides prime to the code's 1,296 people: each is first once and second once, women and men mixed
        first, second = identities[97 * k % len(identities)], identities[(89 * k + 500) % len(identities)]
        where = {"place": place, "time": time, "weather": weather, "object": obj}
        one = SceneSpec(**where, people=(person(first, k),))
        two = SceneSpec(**where, people=(person(first, k), person(second, k + 1)))
        yield one, two, drops[k % len(drops)], bool(k % 2)


def zero_shot_texts(groups: list[list[str]]) -> list[str]:
    """The zero-shot prompts of every attribute for each group of people (their class nouns, left to right)."""
    from ..world.clip import people_phrase, zero_shot_prompts

    texts = []
    for group in groups:
        people = people_phrase({"people": [{"gender": g} for g in group]})
        for attribute in ("place", "time", "weather", "clothing", "object"):
            for prompts in zero_shot_prompts(attribute, people).values():
                texts += prompts
    return texts


def benchmark_texts() -> list[str]:
    """Benchmark prompts (:func:`~facediffuser.lab.world.benchmark.mini_prompt`, with their placeholders) for every
    place, time, clothing colour and garment, one and two people of either class noun."""
    from ...evaluation.cases import Person
    from ..world.attributes import CLOTHING_COLOURS, GARMENTS, GENDERS, PLACES, TIMES
    from ..world.benchmark import mini_prompt

    people = [Person(name=f"stand-in-{g}", class_noun=g, photos=()) for g in GENDERS]
    colours, places, times = list(CLOTHING_COLOURS), list(PLACES), list(TIMES)
    texts = []
    for k in range(max(len(colours), len(places), len(times), len(GARMENTS), len(people) ** 2)):
        first, second = people[k % len(people)], people[(k // len(people)) % len(people)]
        colour, other = colours[k % len(colours)], colours[(k + 1) % len(colours)]
        garment, place, time = GARMENTS[k % len(GARMENTS)], places[k % len(places)], times[k % len(times)]
        texts.append(mini_prompt([first], [colour], [garment], place, time))
        texts.append(mini_prompt([first, second], [colour, other], [garment, garment], place, time))
    return texts
