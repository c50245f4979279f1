"""The world's vocabulary: identity features, scene attributes, the identities and their split, the two distributions.

Everything here is data and pure functions of a seed. An identity is a set of bold categorical features (what a
person can tell apart at 32-64 px) plus a few small continuous ones that stay fixed for that person. Identities are
drawn from a code in which any two people differ in at least two categorical features: the hair colour is fixed by
the other features (their index sum modulo the number of hair colours), so changing any one feature changes the hair
colour too.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ...io.files import read_json

# ---------------------------------------------------------------------------------------------- identity features
GENDERS = ("man", "woman")  # the class noun of the captions
SKIN_TONES = {
    "pale": (255, 226, 200),
    "light": (240, 192, 150),
    "tan": (214, 160, 110),
    "olive": (180, 126, 80),
    "brown": (130, 82, 50),
    "dark": (80, 50, 32),
}
HAIR_COLOURS = {
    "black": (28, 24, 24),
    "brown": (112, 64, 30),
    "blond": (240, 205, 100),
    "ginger": (210, 84, 24),
    "grey": (200, 200, 205),
    "pink": (240, 100, 180),
}
HAIR_STYLES = ("short", "long", "bob", "bun", "curly", "spiky")
GLASSES = ("none", "round", "sunglasses")
FACIAL_HAIR = ("none", "beard", "moustache")  # men only
FACE_SHAPES = {"oval": 0.74, "round": 0.88, "wide": 0.98}  # face width / face height

# -------------------------------------------------------------------------------------------- scene attributes
PLACES = {
    "beach": "on a beach",
    "forest": "in a forest",
    "city": "on a city street",
    "desert": "in a desert",
    "meadow": "in a meadow",
    "mountains": "in the mountains",
}
TIMES = {"day": "during the day", "sunset": "at sunset", "night": "at night"}
WEATHERS = {"clear": "", "rain": "in the rain", "snow": "in the snow", "fog": "in the fog"}
CLOTHING_COLOURS = {
    "red": (210, 30, 35),
    "orange": (245, 130, 20),
    "yellow": (250, 220, 40),
    "green": (40, 160, 60),
    "blue": (30, 70, 200),
    "purple": (130, 50, 170),
    "white": (245, 245, 245),
    "black": (25, 25, 30),
}
GARMENTS = ("shirt", "sweater", "jacket")
OBJECTS = {"none": "", "dog": "with a dog", "kite": "with a kite", "umbrella": "with an umbrella"}
OBJECT_LABELS = {"dog": "dog", "kite": "kite", "umbrella": "umbrella"}  # COCO labels of their segments

SCENE_ATTRIBUTES = {
    "place": tuple(PLACES),
    "time": tuple(TIMES),
    "weather": tuple(WEATHERS),
    "clothing": tuple(CLOTHING_COLOURS),
    "object": tuple(OBJECTS),
}


@dataclass(frozen=True)
class Identity:
    """One person: bold categorical features plus small continuous ones, all fixed for life."""

    id: int
    gender: str
    skin: str
    hair_colour: str
    hair_style: str
    glasses: str
    facial_hair: str
    face_shape: str
    skin_shift: tuple[int, int, int] = (0, 0, 0)  # per-channel offset of the skin colour
    hair_shift: tuple[int, int, int] = (0, 0, 0)
    width_scale: float = 1.0  # face width multiplier
    eye_spacing: float = 0.5  # distance between the eyes, as a fraction of the face width

    @property
    def noun(self) -> str:
        return self.gender

    @property
    def name(self) -> str:
        return f"id{self.id:04d}"

    def features(self) -> dict[str, str]:
        """The categorical features, for captions, tables and probes."""
        keys = ("gender", "skin", "hair_colour", "hair_style", "glasses", "facial_hair", "face_shape")
        return {k: getattr(self, k) for k in keys}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Identity:
        data = dict(data)
        for key in ("skin_shift", "hair_shift"):
            data[key] = tuple(data[key])
        return cls(**data)


def identity_code() -> list[dict[str, str]]:
    """Every feature combination of the distance-2 code (hair colour = index sum of the others mod 6), in a fixed
    order: 1,296 people, 324 women and 972 men."""
    hair_colours = list(HAIR_COLOURS)
    combos = []
    for g, s, st, gl, fh, sh in itertools.product(
        range(len(GENDERS)),
        range(len(SKIN_TONES)),
        range(len(HAIR_STYLES)),
        range(len(GLASSES)),
        range(len(FACIAL_HAIR)),
        range(len(FACE_SHAPES)),
    ):
        if GENDERS[g] == "woman" and FACIAL_HAIR[fh] != "none":
            continue
        combos.append(
            {
                "gender": GENDERS[g],
                "skin": list(SKIN_TONES)[s],
                "hair_colour": hair_colours[(g + s + st + gl + fh + sh) % len(hair_colours)],
                "hair_style": HAIR_STYLES[st],
                "glasses": GLASSES[gl],
                "facial_hair": FACIAL_HAIR[fh],
                "face_shape": list(FACE_SHAPES)[sh],
            }
        )
    return combos


def make_identities(num_identities: int, seed: int) -> list[Identity]:
    """``num_identities`` people drawn without replacement from :func:`identity_code`, each with its own seeded
    continuous features. Ids are ``0 .. num_identities - 1``."""
    code = identity_code()
    if not 2 <= num_identities <= len(code):
        raise ValueError(f"The world has between 2 and {len(code)} identities, got {num_identities}.")
    rng = np.random.default_rng([seed, 1])
    order = rng.permutation(len(code))[:num_identities]
    people = []
    for k, index in enumerate(order):
        people.append(
            Identity(
                id=k,
                **code[int(index)],
                skin_shift=tuple(int(v) for v in rng.integers(-8, 9, 3)),
                hair_shift=tuple(int(v) for v in rng.integers(-12, 13, 3)),
                width_scale=float(np.round(rng.uniform(0.95, 1.05), 3)),
                eye_spacing=float(np.round(rng.uniform(0.34, 0.42), 3)),
            )
        )
    return people


def split_identities(num_identities: int, num_heldout: int, seed: int) -> dict[str, list[int]]:
    """``{"train": ids, "heldout": ids}``: a fixed seeded split; held-out people never appear in training data."""
    if not 1 <= num_heldout < num_identities:
        raise ValueError(f"`num_heldout` must be in [1, {num_identities - 1}], got {num_heldout}.")
    rng = np.random.default_rng([seed, 2])
    order = rng.permutation(num_identities)
    return {
        "train": sorted(int(i) for i in order[num_heldout:]),
        "heldout": sorted(int(i) for i in order[:num_heldout]),
    }


# ------------------------------------------------------------------------------------------------- distributions
def _uniform(values) -> dict[str, float]:
    return {v: 1.0 for v in values}


@dataclass(frozen=True)
class Distribution:
    """How scenes are drawn: a weight per value of each scene attribute, the share of two-person images, and the
    framing (head height as a fraction of the image side, for one and for two people)."""

    name: str
    weights: dict[str, dict[str, float]]
    two_people: float
    head_one: tuple[float, float]
    head_two: tuple[float, float]
    head_y: tuple[float, float]  # head centre height, fraction of the side
    notes: str = ""

    def probabilities(self, attribute: str) -> dict[str, float]:
        w = self.weights[attribute]
        total = sum(w.values())
        return {v: w.get(v, 0.0) / total for v in SCENE_ATTRIBUTES[attribute]}

    def sample(self, attribute: str, rng: np.random.Generator) -> str:
        p = self.probabilities(attribute)
        values = list(p)
        return values[int(rng.choice(len(values), p=np.array(list(p.values()))))]


SCENES = Distribution(
    name="scenes",
    weights={
        "place": _uniform(PLACES),
        "time": _uniform(TIMES),
        "weather": {"clear": 2.0, "rain": 1.0, "snow": 1.0, "fog": 1.0},
        "clothing": _uniform(CLOTHING_COLOURS),
        "object": {"none": 2.0, "dog": 1.0, "kite": 1.0, "umbrella": 1.0},
    },
    two_people=0.4,
    head_one=(0.24, 0.32),
    head_two=(0.2, 0.26),
    head_y=(0.34, 0.44),
    notes="every scene attribute value, for the TDM",
)

PORTRAITS = Distribution(
    name="portraits",
    weights={
        "place": {"city": 6.0, "meadow": 3.5, "forest": 0.5},
        "time": {"day": 9.0, "sunset": 1.0},
        "weather": {"clear": 1.0},
        "clothing": {"white": 3.0, "black": 3.0, "blue": 2.5, "red": 1.0, "green": 0.2, "orange": 0.1, "purple": 0.1},
        "object": {"none": 1.0},
    },
    two_people=0.3,
    head_one=(0.36, 0.44),
    head_two=(0.27, 0.33),
    head_y=(0.3, 0.38),
    notes="person-centric close-ups in few places and times, for the SDM (FFHQ's role)",
)

DISTRIBUTIONS = {d.name: d for d in (SCENES, PORTRAITS)}


@dataclass(frozen=True)
class PersonSpec:
    """One person in an image: who, what they wear, and this render's pose, framing and light."""

    identity: Identity
    clothing: str
    garment: str
    x: float  # head centre, fraction of the side
    y: float
    head: float  # head height, fraction of the side
    turn: float = 0.0  # -1 (looking left) .. 1
    tilt: float = 0.0  # degrees
    shade: float = 0.0  # -1 .. 1, side light


@dataclass(frozen=True)
class SceneSpec:
    """Everything one image shows; :func:`facediffuser.lab.world.render.render` draws it."""

    place: str
    time: str
    weather: str
    people: tuple[PersonSpec, ...]
    object: str = "none"
    size: int = 64
    brightness: float = 1.0
    horizon: float = 0.55
    variant: int = 0  # seeds the background details (trees, buildings, stars, rain)
    object_side: int = 1  # -1 left, 1 right
    extras: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, values in (("place", PLACES), ("time", TIMES), ("weather", WEATHERS), ("object", OBJECTS)):
            if getattr(self, name) not in values:
                raise ValueError(f"Unknown {name} {getattr(self, name)!r}; choose from {', '.join(values)}.")
        if not 1 <= len(self.people) <= 2:
            raise ValueError(f"A scene has one or two people, got {len(self.people)}.")
        for p in self.people:
            if p.clothing not in CLOTHING_COLOURS:
                raise ValueError(f"Unknown clothing colour {p.clothing!r}; choose from {', '.join(CLOTHING_COLOURS)}.")
            if p.garment not in GARMENTS:
                raise ValueError(f"Unknown garment {p.garment!r}; choose from {', '.join(GARMENTS)}.")
        if self.size < 16 or self.size % 8:
            raise ValueError(f"The image side must be a multiple of 8 and at least 16, got {self.size}.")


def sample_scene(
    distribution: Distribution,
    people: list[Identity],
    rng: np.random.Generator,
    size: int = 64,
) -> SceneSpec:
    """A random scene of ``distribution`` showing ``people`` (one or two, left to right)."""
    d = distribution
    place, time, weather = d.sample("place", rng), d.sample("time", rng), d.sample("weather", rng)
    obj = d.sample("object", rng)
    two = len(people) == 2
    lo, hi = d.head_two if two else d.head_one
    specs = []
    for k, identity in enumerate(people):
        head = float(rng.uniform(lo, hi))
        if two:
            x = float(rng.uniform(0.25, 0.33)) if k == 0 else float(rng.uniform(0.67, 0.75))
        else:
            x = float(rng.uniform(0.4, 0.6)) if d is PORTRAITS else float(rng.uniform(0.32, 0.68))
        specs.append(
            PersonSpec(
                identity=identity,
                clothing=d.sample("clothing", rng),
                garment=GARMENTS[int(rng.integers(len(GARMENTS)))],
                x=x,
                y=float(rng.uniform(*d.head_y)),
                head=head,
                turn=float(rng.uniform(-1, 1)),
                tilt=float(rng.uniform(-12, 12)),
                shade=float(rng.uniform(-1, 1)),
            )
        )
    return SceneSpec(
        place=place,
        time=time,
        weather=weather,
        people=tuple(specs),
        object=obj,
        size=size,
        brightness=float(rng.uniform(0.9, 1.1)),
        horizon=float(rng.uniform(0.5, 0.62)),
        variant=int(rng.integers(2**31)),
        object_side=1 if specs[-1].x < 0.6 else -1,
    )


# ------------------------------------------------------------------------------------------------------ captions
def person_phrase(person: PersonSpec) -> tuple[str, int]:
    """``("a woman in a green sweater", end)`` where ``end`` is the offset just after the class noun."""
    head = f"a {person.identity.noun}"
    return f"{head} in {article(person.clothing)} {person.clothing} {person.garment}", len(head)


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def looks_phrase(identity: Identity) -> str:
    """What a web caption might say about someone's looks (only the world's CLIP sees these)."""
    parts = [f"{identity.hair_style} {identity.hair_colour} hair", f"{identity.skin} skin"]
    if identity.glasses == "round":
        parts.append("glasses")
    elif identity.glasses == "sunglasses":
        parts.append("sunglasses")
    if identity.facial_hair != "none":
        parts.append(f"a {identity.facial_hair}")
    parts.append(f"{article(identity.face_shape)} {identity.face_shape} face")
    return "with " + ", ".join(parts[:-1]) + " and " + parts[-1]


def caption(scene: SceneSpec, *, looks: bool = False, drop: frozenset[str] = frozenset()) -> tuple[str, list[int]]:
    """The caption and the ``end`` offset of each person's class noun, people left to right.

    It names the class noun, the clothing and the scene, never the identity's features (unless ``looks``, for the
    world's CLIP only). ``drop`` leaves out any of ``clothing``, ``object``, ``place``, ``time``, ``weather``."""
    text, ends = "", []
    for k, person in enumerate(scene.people):
        if k:
            text += " and "
        phrase, end = person_phrase(person)
        if "clothing" in drop:
            phrase = phrase[:end]
        if looks:
            phrase = phrase[:end] + " " + looks_phrase(person.identity) + phrase[end:]
        ends.append(len(text) + end)
        text += phrase
    tail = [
        ("object", OBJECTS[scene.object]),
        ("place", PLACES[scene.place]),
        ("time", TIMES[scene.time]),
        ("weather", WEATHERS[scene.weather]),
    ]
    for key, phrase in tail:
        if phrase and key not in drop:
            text += " " + phrase
    return text, ends


def load_people(out: Path) -> tuple[list[Identity], dict[str, list[int]]]:
    path = out / "world.json"
    data = read_json(path, dict, "a world's people")
    try:
        people = [Identity.from_dict(p) for p in data["people"]]
        split = data["split"]
        if not all(isinstance(split[k], list) for k in ("train", "heldout")):
            raise TypeError
    except (KeyError, TypeError, ValueError, AttributeError):
        raise ValueError(
            f"{path} is not a world's people (`people` and `split` as the identities stage writes them): rebuild it "
            "with --redo identities (the stages after it are rebuilt too)."
        ) from None
    return people, split
