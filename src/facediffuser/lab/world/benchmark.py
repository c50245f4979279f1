"""``facediffuser evaluate --benchmark mini``: held-out people of the world in scenes that the mini SDM's training
data (``portraits``) holds rarely or never, and the per-attribute scorer of its images.

The cases (:func:`mini_cases`):

* **People:** 20 held-out people of a reference folder in the layout ``world build`` writes (``idNNNN/1.png ...``
  and ``subjects.json``): the whole folder when it holds 20 or fewer, else 10 women and 10 men drawn with a fixed
  seed (:func:`benchmark_people`). They are also the gallery of the identity score (first choice among them; chance
  5%).
* **Scenes:** places, times and clothing colours that ``portraits`` never or rarely shows (docs/world.md):
  beach, desert, mountains (never), forest (5%); night (never), sunset (10%); yellow (never), orange, purple (1%),
  green (2%) clothing. Each value is used equally often (a seeded, balanced draw); the weather is clear and there is
  no object (the world's CLIP does not read objects, docs/world.md).
* **Prompts** are the world's captions (:func:`facediffuser.lab.world.attributes.caption`) with a placeholder after
  each class noun: ``a woman <|image|> in a yellow sweater on a beach at night``. Two people are named left to
  right, as in the world's data.
* Two single-subject cases per person (group ``single``) and one two-subject case per person (group ``multi``):
  each person is the left one of one pair and the right one of another.

The scores (:class:`MiniAttributeScorer`), per image, each 1 (right) or 0 (wrong), averaged over the people of a
two-person image:

* ``place``, ``time``: CLIP zero-shot, the prompts of :func:`facediffuser.lab.world.clip.zero_shot_prompts` naming the
  people the image should show ("a woman and a man in a desert");
* ``clothing``: zero-shot over each person's colour, the ensemble over garments of
  :func:`~facediffuser.lab.world.clip.zero_shot_prompts` ("a woman in a yellow shirt / sweater / jacket"). Two people:
  each on their half of the image (the left half for the first-named person, as the world's captions order people),
  stretched back to a square (:func:`person_halves`). On the world's own renders of the benchmark's two-person
  cases, halves read 100% of 200 colours at 32 px, and whole-image prompts naming both colours only 55%;
* ``scene``: place, time and every person's clothing all right;
* ``identity``: the face recognizer (the IP backend) finds the image's largest faces (as many as people asked);
  a person is right when one of those faces is nearest (cosine) to that person's references among the gallery.

Two-person images also get what the averages above hide (NaN on one-person images: not applicable), read on the two
largest faces, each placed in the half of the image that holds its box's centre (:func:`placed_faces`):

* ``identity_placed``: per person, 1 when the face in that person's half (the left for the first-named; the larger
  when both faces are in one half) is nearest to that person among the gallery, 0 otherwise, a face missing
  included; the mean over the two;
* ``leak``: 1 when both faces are nearest to the same one of the two asked people (one drawn twice, the other not
  at all);
* ``swap``: 1 when the left face is nearest to the second-named person and the right face to the first-named;
* ``clothing_swap``: 1 when each half's colour is the other person's;
* ``identity_dressed``: per person, 1 when a half whose face is nearest that person wears that person's colour, 0
  otherwise; the mean over the two. It asks whether each face is drawn on its own person, wherever the two stand: the
  models are trained on half-flipped images, so nothing teaches them that the first-named person stands on the left,
  and the place-aware metrics above also count which way round the layout came out.

With fewer than two faces found there is neither a leak nor a swap (0), and a person whose half holds no face has
``identity_placed`` 0.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F

from ...evaluation.benchmarks import Benchmark, BenchmarkDefaults, Case, Person, load_subjects, register_benchmark
from ...evaluation.identity import Face
from ...io.ffhq_wild import insert_placeholders
from ...io.files import read_json
from ...io.package_data import WORLD_REFERENCES, packaged
from ...prompting import DEFAULT_PLACEHOLDER
from .attributes import GARMENTS, GENDERS, Identity, PersonSpec, SceneSpec, caption
from .clip import zero_shot_prompts

logger = logging.getLogger(__name__)

# Values that `portraits` (the SDM's data) never or rarely holds: docs/world.md, "What portraits never or rarely
# contains".
MINI_PLACES = ("beach", "desert", "mountains", "forest")
MINI_TIMES = ("night", "sunset")
MINI_COLOURS = ("yellow", "orange", "purple", "green")
MINI_PEOPLE = 20
SINGLE_PER_PERSON = 2
IMAGES_PER_PROMPT = 1  # 60 cases x 4 methods: ~11 minutes on 1 CPU thread (docs/evaluation.md, "The mini benchmark")
SEED = 0
# Read on two-person images only (NaN on one-person images): see the module docstring.
TWO_PERSON_METRICS = ("identity_placed", "leak", "swap", "clothing_swap", "identity_dressed")
ATTRIBUTE_VERSION = 3  # bump when the zero-shot prompts or the rules change: part of the score cache's key


def default_references() -> Path | None:
    """The held-out people the package ships for this benchmark (``facediffuser/data/world/references``), if any."""
    shipped = packaged(WORLD_REFERENCES)
    return shipped if shipped.is_dir() else None


def default_clip_model() -> str:
    """The world's CLIP the package ships (``facediffuser/data/world/clip``); without it, a ``ValueError`` naming the
    flag."""
    from ...evaluation.clip_score import MINI_CLIP_MODEL, packaged_world_clip

    if (packaged_world_clip() / "config.json").is_file():
        return MINI_CLIP_MODEL
    raise ValueError(
        "The mini benchmark scores with the world's CLIP: pass --clip-model WORLD/clip (from `facediffuser world "
        "build --out WORLD`)."
    )


# ------------------------------------------------------------------------------------------------------- cases
def benchmark_people(people: Sequence[Person], count: int = MINI_PEOPLE, seed: int = SEED) -> list[Person]:
    """``count`` people of ``people``, sorted by name: all of them when there are no more, else half women and half
    men (fewer of one class noun: all of those, the rest from the other), each drawn with a fixed seed."""
    people = sorted(people, key=lambda p: p.name)
    if len(people) <= count:
        return people
    rng = np.random.default_rng([seed, 13])
    women = [p for p in people if p.class_noun == "woman"]
    men = [p for p in people if p.class_noun != "woman"]
    take_women = min(len(women), max(count // 2, count - len(men)))
    chosen = [women[i] for i in rng.permutation(len(women))[:take_women]]
    chosen += [men[i] for i in rng.permutation(len(men))[: count - take_women]]
    return sorted(chosen, key=lambda p: p.name)


def _balanced(values: Sequence[str], count: int, rng: np.random.Generator) -> list[str]:
    """``count`` values, each as often as the others (give or take one), in a seeded order."""
    repeated = [values[k % len(values)] for k in range(count)]
    return [repeated[i] for i in rng.permutation(count)]


def _stand_in(person: Person) -> Identity:
    """An identity with ``person``'s class noun: captions without looks use nothing else."""
    if person.class_noun not in GENDERS:
        raise ValueError(
            f"The mini benchmark needs each person's class noun to be one of {', '.join(GENDERS)} (subjects.json of "
            f"the reference folder); {person.name!r} is a {person.class_noun!r}."
        )
    return Identity(
        id=0, gender=person.class_noun, skin="pale", hair_colour="black", hair_style="short", glasses="none",
        facial_hair="none", face_shape="oval",
    )  # fmt: skip


def mini_prompt(
    people: Sequence[Person],
    clothing: Sequence[str],
    garments: Sequence[str],
    place: str,
    time: str,
    placeholder: str = DEFAULT_PLACEHOLDER,
) -> str:
    """The world's caption of the scene, with ``placeholder`` after each class noun."""
    specs = tuple(
        PersonSpec(identity=_stand_in(p), clothing=c, garment=g, x=0.5, y=0.5, head=0.3)
        for p, c, g in zip(people, clothing, garments)
    )
    text, ends = caption(SceneSpec(place=place, time=time, weather="clear", people=specs))
    return insert_placeholders(text, ends, placeholder)


def _case(
    case_id: str, group: str, people: Sequence[Person], clothing, garments, place, time, placeholder: str
) -> Case:
    attributes = {
        "place": place,
        "time": time,
        "weather": "clear",
        "object": "none",
        "people": [
            {"name": p.name, "class_noun": p.class_noun, "clothing": c, "garment": g}
            for p, c, g in zip(people, clothing, garments)
        ],
    }
    prompt = mini_prompt(people, clothing, garments, place, time, placeholder)
    return Case(case_id, prompt, tuple(people), group, attributes)


def mini_cases(source: str | Path, placeholder: str = DEFAULT_PLACEHOLDER) -> Benchmark:
    """The benchmark over the reference folder ``source`` (see the module docstring)."""
    everyone = load_subjects(Path(source))
    people = benchmark_people(everyone)
    if len(people) < 2:
        raise ValueError(f"The mini benchmark needs at least two people in {source}, found {len(people)}.")
    if len(people) < MINI_PEOPLE:
        logger.warning(
            "The mini benchmark found %d people in %s, not %d: the identity score picks among %d (chance %.0f%%).",
            len(people),
            source,
            MINI_PEOPLE,
            len(people),
            100 / len(people),
        )
    rng = np.random.default_rng([SEED, 14])
    n = len(people)
    singles, pairs = n * SINGLE_PER_PERSON, n
    places = _balanced(MINI_PLACES, singles + pairs, rng)
    times = _balanced(MINI_TIMES, singles + pairs, rng)
    colours = _balanced(MINI_COLOURS, singles + pairs, rng)
    garments = [GARMENTS[int(g)] for g in rng.integers(len(GARMENTS), size=2 * (singles + pairs))]
    cases = []
    for k in range(SINGLE_PER_PERSON):  # prompt index first: --limit takes a spread of people
        for i, person in enumerate(people):
            j = k * n + i
            cases.append(
                _case(
                    f"{person.name}/single-{k}", "single", [person], [colours[j]], [garments[j]], places[j],
                    times[j], placeholder,
                )
            )  # fmt: skip
    offset = max(1, (n - 1) // 2)
    for m in range(pairs):
        j = singles + m
        left, right = people[m], people[(m + offset) % n]
        # the second person's colour: another of the rare ones, so the two can be told apart
        others = [c for c in MINI_COLOURS if c != colours[j]]
        second = others[int(rng.integers(len(others)))]
        cases.append(
            _case(
                f"{left.name}+{right.name}/multi", "multi", [left, right], [colours[j], second],
                [garments[2 * j], garments[2 * j + 1]], places[j], times[j], placeholder,
            )
        )  # fmt: skip
    return Benchmark(
        "mini",
        "mixed",
        tuple(cases),
        IMAGES_PER_PROMPT,
        gallery=tuple(people),
        attribute_scorer="facediffuser.lab.world.benchmark:MiniAttributeScorer",
        person_masks="facediffuser.lab.world.benchmark:case_person_masks",
    )


def identity_gap(similarities: torch.Tensor, index: int) -> float:
    """How much nearer one face is to person ``index`` than to the others: its cosine to that person's references
    minus the mean of its cosines to the other people's (``similarities``: one per person, in gallery order)."""
    others = torch.cat([similarities[:index], similarities[index + 1 :]])
    return float(similarities[index] - others.mean())


# ------------------------------------------------------------------------------------------------------ scorer
def person_halves(image: PIL.Image.Image) -> list[PIL.Image.Image]:
    """The left and the right half of a two-person image, each stretched back to the image's size: where the world
    puts the first and the second person of a caption."""
    width, height = image.size
    halves = [(0, 0, width // 2, height), (width - width // 2, 0, width, height)]
    return [image.crop(box).resize((width, height), PIL.Image.Resampling.BICUBIC) for box in halves]


def placed_faces(faces: Sequence[Face], width: int) -> list[Face | None]:
    """The face in the left and the face in the right half of an image ``width`` pixels wide (``None`` where none
    is), each placed by its box's centre (a centre on the middle line counts as right). Of two faces in one half, the
    first of ``faces`` (backends list the largest first); a face without a box is in neither half."""
    halves: list[Face | None] = [None, None]
    for face in faces:
        if face.box is None:
            continue
        side = int((face.box[0] + face.box[2]) / 2 >= width / 2)
        if halves[side] is None:
            halves[side] = face
    return halves


class MiniAttributeScorer:
    """Scores the mini benchmark's images for what their case asked (see the module docstring).

    Args:
        clip: the world's CLIP (the same :class:`~facediffuser.evaluation.clip_score.ClipScorer` that scores PC).
        backend: the face recognizer (``--ip-backend mini``).
        gallery: the people among whom a face's identity is chosen.
    """

    metrics = ("place", "time", "clothing", "scene", "identity", *TWO_PERSON_METRICS)  # as reports.ATTRIBUTE_METRICS

    def __init__(self, clip, backend, gallery: Sequence[Person]):
        self.clip = clip
        self.backend = backend
        self.gallery = list(gallery)
        self._classes: dict[tuple[str, str], tuple[list[str], torch.Tensor]] = {}
        self._gallery: tuple[list[str], torch.Tensor] | None = None

    @classmethod
    def from_scorers(cls, clip, backend, gallery: Sequence[Person]) -> MiniAttributeScorer:
        if clip is None or backend is None:
            raise ValueError("The mini benchmark's attribute scores need the world's CLIP and a face recognizer.")
        return cls(clip, backend, gallery)

    def settings(self) -> dict[str, Any]:
        """What decides the scores besides the image and the case: part of the score cache's key."""
        from ...evaluation.scoring import references_digest

        return {
            "version": ATTRIBUTE_VERSION,
            "clip": self.clip.name,
            "clip_size": self.clip.image_size,
            "backend": self.backend.name,
            "backend_settings": self.backend.settings(),
            "gallery": references_digest(self.gallery),
        }

    def _class_features(self, attribute: str, people: str) -> tuple[list[str], torch.Tensor]:
        """``(values, (V, D))``: per value, the normalized mean of its prompts' unit text features."""
        key = (attribute, people)
        if key not in self._classes:
            prompts = zero_shot_prompts(attribute, people)
            texts = [t for ts in prompts.values() for t in ts]
            feats = F.normalize(self.clip.text_features(texts), dim=-1)
            rows, start = [], 0
            for ts in prompts.values():
                rows.append(F.normalize(feats[start : start + len(ts)].mean(0), dim=0))
                start += len(ts)
            self._classes[key] = (list(prompts), torch.stack(rows))
        return self._classes[key]

    def _gallery_features(self) -> tuple[list[str], torch.Tensor]:
        """``(names, (N, D))``: each gallery person's unit reference identity (people whose photos show no face the
        recognizer finds are left out, with a warning)."""
        if self._gallery is None:
            names, rows = [], []
            for person in self.gallery:
                embedding = self.backend.embed_reference([photo.load() for photo in person.photos])
                if embedding is None:
                    logger.warning("No face found in the references of %r: it is left out of the gallery.", person.name)
                    continue
                names.append(person.name)
                rows.append(F.normalize(embedding.double(), dim=0))
            self._gallery = (names, torch.stack(rows) if rows else torch.zeros(0, 0, dtype=torch.float64))
        return self._gallery

    def _pick(self, attribute: str, people: str, feature: torch.Tensor) -> str:
        values, classes = self._class_features(attribute, people)
        return values[int((classes @ feature).argmax())]

    def _first_choices(self, faces: Sequence[Face]) -> list[str]:
        """The gallery name nearest (cosine) to each of ``faces`` (none when the gallery is empty)."""
        names, gallery = self._gallery_features()
        if not names:
            return []
        return [names[int((gallery @ F.normalize(f.embedding.double(), dim=0)).argmax())] for f in faces]

    def identities(self, image: PIL.Image.Image, count: int) -> list[str]:
        """The gallery name nearest to each of the ``count`` largest faces of ``image`` (fewer when fewer are found)."""
        return self._first_choices(self.backend.faces(image)[:count])

    @staticmethod
    def _two_people(
        image: PIL.Image.Image, faces: Sequence[Face], found: Sequence[str], asked: Sequence[str], scorable: bool
    ) -> tuple[dict[str, float], list[str | None]]:
        """The identity metrics of a two-person image (see the module docstring) from its two largest ``faces`` and
        their first choices ``found``, and who is read in the left and in the right half."""
        choice = {id(face): name for face, name in zip(faces, found)}
        placed = [None if face is None else choice.get(id(face)) for face in placed_faces(faces, image.width)]
        if not scorable:
            return dict.fromkeys(("identity_placed", "leak", "swap"), math.nan), placed
        return {
            "identity_placed": float(np.mean([placed[k] == asked[k] for k in range(2)])),
            "leak": float(len(found) == 2 and found[0] == found[1] and found[0] in asked),
            "swap": float(placed == [asked[1], asked[0]]),
        }, placed

    def score(self, images: Sequence[PIL.Image.Image], case: Case) -> list[dict[str, Any]]:
        """Per image: each metric (1 right, 0 wrong, the mean over people for clothing and identity; NaN when it
        cannot be scored) and ``predicted``, what the scorer read."""
        asked = case.attributes
        if not asked:
            raise ValueError(f"Case {case.case_id!r} carries no attributes to score.")
        wanted = asked["people"]
        people = " and ".join(f"a {p['class_noun']}" for p in wanted)
        colours = [p["clothing"] for p in wanted]
        feats = F.normalize(self.clip.image_features(list(images)), dim=-1)
        if len(wanted) == 1:
            worn = feats[:, None]  # (N, 1, D)
        else:
            halves = [half for image in images for half in person_halves(image)]
            worn = F.normalize(self.clip.image_features(halves), dim=-1).view(len(images), 2, -1)  # (N, 2, D)
        gallery_names = set(self._gallery_features()[0])
        out = []
        for image, feature, clothes in zip(images, feats, worn):
            place = self._pick("place", people, feature)
            time = self._pick("time", people, feature)
            read = [self._pick("clothing", f"a {p['class_noun']}", c) for p, c in zip(wanted, clothes)]
            clothing = float(np.mean([r == c for r, c in zip(read, colours)]))
            faces = self.backend.faces(image)[: len(wanted)]
            found = self._first_choices(faces)
            scorable = all(p["name"] in gallery_names for p in wanted)
            identity = float(np.mean([p["name"] in found for p in wanted])) if scorable else math.nan
            right = {"place": float(place == asked["place"]), "time": float(time == asked["time"])}
            predicted = {"place": place, "time": time, "clothing": read, "identity": found}
            two: dict[str, float] = dict.fromkeys(TWO_PERSON_METRICS, math.nan)  # one person: not applicable
            if len(wanted) == 2:
                names = [p["name"] for p in wanted]
                placement, predicted["placed"] = self._two_people(image, faces, found, names, scorable)
                dressed = [any(placed == name and worn == colour for placed, worn in zip(predicted["placed"], read))
                           for name, colour in zip(names, colours)]  # fmt: skip
                two.update(
                    placement,
                    clothing_swap=float(read == colours[::-1]),
                    identity_dressed=float(np.mean(dressed)) if scorable else math.nan,
                )
            out.append(
                {
                    **right,
                    "clothing": clothing,
                    "scene": float(right["place"] and right["time"] and clothing == 1.0),
                    "identity": identity,
                    **two,
                    "predicted": predicted,
                }
            )
        return out


# ------------------------------------------------------------------------------------------------- ceiling
def render_case(case: Case, identities: Mapping[str, Identity], size: int = 64, seed: int = 0) -> PIL.Image.Image:
    """The world's own render of what ``case`` asks (``identities``: name -> :class:`Identity`), framed as in the
    ``scenes`` data: what a perfect model would draw. Scoring such renders measures the scorer itself."""
    return render_case_scene(case, identities, size, seed).image


def case_person_masks(case: Case, size: int, seed: int = 0) -> np.ndarray:
    """``(K, size, size)`` bool: where the world puts each person of ``case`` (:func:`render_case_scene`, with
    stand-in looks: a person's place and outline do not depend on who they are), in the case's order (left to
    right). The ground-truth person masks of the world's layout, for the IP-Adapter's upper bound."""
    identities = {p["name"]: _stand_in(person) for p, person in zip(case.attributes["people"], case.people)}
    segmap = render_case_scene(case, identities, size, seed).segmap
    return np.stack([segmap == k + 1 for k in range(len(case.people))])


def render_case_scene(case: Case, identities: Mapping[str, Identity], size: int = 64, seed: int = 0):
    """:func:`render_case`'s whole :class:`~facediffuser.lab.world.render.Rendered` (image, person segments)."""
    from .attributes import SCENES
    from .render import render

    rng = np.random.default_rng([seed, 15])
    wanted = case.attributes["people"]
    two = len(wanted) == 2
    lo, hi = SCENES.head_two if two else SCENES.head_one
    specs = []
    for k, p in enumerate(wanted):
        x = (rng.uniform(0.25, 0.33) if k == 0 else rng.uniform(0.67, 0.75)) if two else rng.uniform(0.32, 0.68)
        specs.append(
            PersonSpec(
                identity=identities[p["name"]], clothing=p["clothing"], garment=p["garment"], x=float(x),
                y=float(rng.uniform(*SCENES.head_y)), head=float(rng.uniform(lo, hi)), turn=float(rng.uniform(-1, 1)),
                tilt=float(rng.uniform(-12, 12)), shade=float(rng.uniform(-1, 1)),
            )
        )  # fmt: skip
    scene = SceneSpec(
        place=case.attributes["place"], time=case.attributes["time"], weather="clear", people=tuple(specs),
        size=size, variant=int(rng.integers(2**31)),
    )  # fmt: skip
    return render(scene)


def load_identities(world_json: str | Path) -> dict[str, Identity]:
    """name -> :class:`Identity` of every person of a ``world.json`` (written by ``facediffuser world render``)."""
    data = read_json(world_json, dict, "a world's people")
    people = [Identity.from_dict(p) for p in data["people"]]
    return {p.name: p for p in people}


@register_benchmark(
    "mini",
    BenchmarkDefaults(
        data=lambda: default_references(),  # looked up when asked, as the package's data may change meanwhile
        ip_backend="mini",
        clip_model=lambda: default_clip_model(),
        # both guidance bases whatever --subject-guidance-base says (the run's own base is the unsuffixed row)
        methods=("tdm", "sdm", "face-diffuser:0.3:0.6:text", "face-diffuser:0.3:0.6:null"),
        data_hint="the world's reference folder, WORLD/references from `facediffuser world build --out WORLD`",
    ),
)
def mini_benchmark(source: Path, placeholder: str = DEFAULT_PLACEHOLDER) -> Benchmark:
    """The mini model's benchmark (``evaluate --benchmark mini``): :func:`mini_cases` of the world's reference folder
    ``source``. Registered when this module is first imported; evaluation reaches it by name."""
    return mini_cases(source, placeholder)
