"""The renderer: a :class:`~facediffuser.lab.world.attributes.SceneSpec` in, an image, its person segments and face
boxes out. numpy and PIL only.

Shapes are drawn flat at :data:`SUPERSAMPLE` times the output side and box-filtered down, so edges are anti-aliased
and the output is a pure function of the spec (the same spec gives the same bytes). Coordinates in a spec are
fractions of the image side.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from .attributes import (
    CLOTHING_COLOURS,
    FACE_SHAPES,
    HAIR_COLOURS,
    OBJECT_LABELS,
    SKIN_TONES,
    PersonSpec,
    SceneSpec,
)

SUPERSAMPLE = 4

SKY = {  # (top, bottom) colours by time of day
    "day": ((95, 160, 235), (175, 215, 250)),
    "sunset": ((85, 60, 130), (250, 150, 80)),
    "night": ((8, 12, 35), (30, 40, 85)),
}
LAND_TINT = {"day": (1.0, 1.0, 1.0), "sunset": (1.02, 0.8, 0.68), "night": (0.3, 0.34, 0.55)}
PERSON_TINT = {"day": (1.0, 1.0, 1.0), "sunset": (1.04, 0.9, 0.8), "night": (0.62, 0.66, 0.85)}
OVERCAST = {"day": (150, 155, 165), "sunset": (140, 120, 130), "night": (35, 38, 50)}


@dataclass
class Rendered:
    """One rendered image.

    Attributes:
        image: RGB, ``size x size``.
        segmap: ``(size, size)`` uint8; 0 background, ``k + 1`` for person ``k`` (left to right), 10 for the object.
        face_boxes: per person, ``[x1, y1, x2, y2]`` of the head (face and hair) in pixels.
        person_boxes: per person, the box of their segment in pixels.
        object_box: the object's box, or ``None``.
    """

    image: Image.Image
    segmap: np.ndarray
    face_boxes: list[list[float]]
    person_boxes: list[list[float]]
    object_box: list[float] | None


OBJECT_SEGMENT = 10


def _shift(colour, delta) -> tuple[int, int, int]:
    return tuple(min(255, max(0, int(c) + int(d))) for c, d in zip(colour, delta))


def _tint(rgb: np.ndarray, tint) -> np.ndarray:
    return np.clip(rgb * np.asarray(tint, dtype=np.float32), 0, 255)


def _box_of(alpha: np.ndarray, scale: float) -> list[float] | None:
    ys, xs = np.nonzero(alpha > 127)
    if not len(xs):
        return None
    return [float(xs.min()) / scale, float(ys.min()) / scale, float(xs.max() + 1) / scale, float(ys.max() + 1) / scale]


# ------------------------------------------------------------------------------------------------- background
def _sky(scene: SceneSpec, w: int, rng: np.random.Generator) -> Image.Image:
    top, bottom = (np.array(c, dtype=np.float32) for c in SKY[scene.time])
    t = np.linspace(0, 1, w, dtype=np.float32)[:, None]
    column = top * (1 - t) + bottom * t  # (W, 3)
    if scene.weather != "clear":
        column = 0.35 * column + 0.65 * np.array(OVERCAST[scene.time], dtype=np.float32)
    sky = Image.fromarray(np.repeat(column[:, None, :], w, axis=1).round().astype(np.uint8))
    d = ImageDraw.Draw(sky)
    if scene.weather == "clear":
        if scene.time == "day":
            x, r = w * rng.uniform(0.1, 0.9), 0.07 * w
            d.ellipse([x - r, 0.1 * w - r, x + r, 0.1 * w + r], fill=(255, 240, 120))
        elif scene.time == "sunset":
            x, r, y = w * rng.uniform(0.2, 0.8), 0.12 * w, scene.horizon * w
            d.ellipse([x - r, y - r, x + r, y + r], fill=(255, 110, 50))
        else:
            x, r = w * rng.uniform(0.1, 0.9), 0.055 * w
            d.ellipse([x - r, 0.1 * w - r, x + r, 0.1 * w + r], fill=(240, 240, 215))
            for _ in range(14):
                sx, sy, sr = w * rng.uniform(0, 1), w * rng.uniform(0, scene.horizon), w * 0.008
                d.ellipse([sx - sr, sy - sr, sx + sr, sy + sr], fill=(255, 255, 240))
    else:
        cloud = _shift(OVERCAST[scene.time], (-25, -25, -20))
        for _ in range(5):
            cx, cy = w * rng.uniform(0, 1), w * rng.uniform(0.02, 0.25)
            rx, ry = w * rng.uniform(0.12, 0.22), w * rng.uniform(0.04, 0.07)
            d.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=cloud)
    return sky


def _land(scene: SceneSpec, w: int, rng: np.random.Generator) -> Image.Image:
    """The ground and the place's landmarks, on a transparent layer (the sky shows through above them)."""
    land = Image.new("RGBA", (w, w), (0, 0, 0, 0))
    d = ImageDraw.Draw(land)
    h = scene.horizon * w
    place = scene.place
    if place == "beach":
        d.rectangle([0, h, w, h + 0.12 * w], fill=(30, 110, 195))
        d.rectangle([0, h + 0.12 * w, w, w], fill=(238, 214, 160))
        d.line([0, h + 0.12 * w, w, h + 0.12 * w], fill=(250, 250, 250), width=max(1, w // 64))
    elif place == "forest":
        d.rectangle([0, h, w, w], fill=(60, 105, 45))
        for k in range(9):
            x = w * (k + rng.uniform(-0.3, 0.3)) / 8
            th, tw = w * rng.uniform(0.22, 0.36), w * rng.uniform(0.07, 0.1)
            base = h + w * 0.03
            d.rectangle([x - tw * 0.15, base - th * 0.2, x + tw * 0.15, base + w * 0.02], fill=(90, 60, 35))
            d.polygon([(x - tw, base - th * 0.15), (x + tw, base - th * 0.15), (x, base - th)], fill=(25, 85, 40))
    elif place == "city":
        d.rectangle([0, h, w, w], fill=(105, 105, 110))
        d.rectangle([0, h, w, h + 0.05 * w], fill=(165, 165, 160))
        x = -rng.uniform(0, 0.1) * w
        while x < w:
            bw, bh = w * rng.uniform(0.12, 0.2), w * rng.uniform(0.15, 0.42)
            grey = int(rng.integers(95, 170))
            colour = (grey, grey - int(rng.integers(0, 20)), grey - int(rng.integers(0, 30)))
            d.rectangle([x, h - bh, x + bw - w * 0.01, h], fill=colour)
            window = (250, 220, 110) if scene.time == "night" else (180, 205, 225)
            for wy in np.arange(h - bh + w * 0.03, h - w * 0.03, w * 0.05):
                for wx in np.arange(x + w * 0.02, x + bw - w * 0.04, w * 0.045):
                    d.rectangle([wx, wy, wx + w * 0.02, wy + w * 0.025], fill=window)
            x += bw
    elif place == "desert":
        d.rectangle([0, h, w, w], fill=(232, 178, 98))
        for _ in range(3):
            cx, rx = w * rng.uniform(0, 1), w * rng.uniform(0.25, 0.45)
            d.ellipse([cx - rx, h - 0.06 * w, cx + rx, h + 0.08 * w], fill=(214, 152, 80))
        for _ in range(2):
            cx, ch = w * rng.uniform(0.05, 0.95), w * rng.uniform(0.12, 0.2)
            base, cw = h + w * 0.08, w * 0.025
            green = (55, 135, 60)
            d.rounded_rectangle([cx - cw, base - ch, cx + cw, base], radius=cw, fill=green)
            d.rounded_rectangle([cx - 3 * cw, base - ch * 0.7, cx - cw, base - ch * 0.55], radius=cw / 2, fill=green)
            d.rounded_rectangle(
                [cx - 3 * cw, base - ch * 0.95, cx - 2 * cw, base - ch * 0.6], radius=cw / 2, fill=green
            )
    elif place == "meadow":
        d.rectangle([0, h, w, w], fill=(110, 196, 70))
        for _ in range(3):
            cx, rx = w * rng.uniform(0, 1), w * rng.uniform(0.25, 0.45)
            d.ellipse([cx - rx, h - 0.07 * w, cx + rx, h + 0.07 * w], fill=(140, 210, 95))
        flowers = ((230, 60, 60), (250, 230, 60), (250, 250, 250))
        for _ in range(30):
            fx, fy, fr = w * rng.uniform(0, 1), w * rng.uniform(scene.horizon + 0.06, 1), w * 0.009
            d.ellipse([fx - fr, fy - fr, fx + fr, fy + fr], fill=flowers[int(rng.integers(3))])
    elif place == "mountains":
        d.rectangle([0, h, w, w], fill=(115, 135, 95))
        for _ in range(4):
            cx, mh, mw = w * rng.uniform(-0.1, 1.1), w * rng.uniform(0.22, 0.38), w * rng.uniform(0.25, 0.4)
            d.polygon([(cx - mw, h + 1), (cx + mw, h + 1), (cx, h - mh)], fill=(105, 110, 140))
            cap = 0.3
            d.polygon(
                [(cx - mw * cap, h - mh * (1 - cap)), (cx + mw * cap, h - mh * (1 - cap)), (cx, h - mh)],
                fill=(245, 245, 250),
            )
    arr = np.asarray(land).astype(np.float32)
    rgb = arr[..., :3]
    if scene.weather == "snow":
        ground = np.zeros(rgb.shape[:2], dtype=bool)
        ground[int(h) :, :] = True
        rgb[ground] = 0.4 * rgb[ground] + 0.6 * np.array((235, 238, 245), dtype=np.float32)
    elif scene.weather == "rain":
        rgb *= 0.82
    arr[..., :3] = _tint(rgb, LAND_TINT[scene.time])
    return Image.fromarray(arr.round().astype(np.uint8), "RGBA")


# ----------------------------------------------------------------------------------------------------- people
def _head_layer(person: PersonSpec, w: int) -> tuple[Image.Image, list[float]]:
    """The head (face, hair, glasses, facial hair) on a transparent layer, rotated by the tilt, and the face box."""
    ident = person.identity
    h = person.head * w
    fw = h * FACE_SHAPES[ident.face_shape] * ident.width_scale
    cx, cy = person.x * w, person.y * w
    skin = _shift(SKIN_TONES[ident.skin], ident.skin_shift)
    hair = _shift(HAIR_COLOURS[ident.hair_colour], ident.hair_shift)
    dx = person.turn * 0.1 * fw
    layer = Image.new("RGBA", (w, w), (0, 0, 0, 0))
    d = ImageDraw.Draw(layer)

    style = ident.hair_style
    if style == "long":
        d.rounded_rectangle([cx - 0.66 * fw, cy - 0.45 * h, cx + 0.66 * fw, cy + 0.8 * h], radius=0.3 * fw, fill=hair)
    elif style == "bob":
        d.rounded_rectangle([cx - 0.64 * fw, cy - 0.45 * h, cx + 0.64 * fw, cy + 0.32 * h], radius=0.3 * fw, fill=hair)
    elif style == "curly":
        d.ellipse([cx - 0.95 * fw, cy - 0.85 * h, cx + 0.95 * fw, cy + 0.3 * h], fill=hair)
    elif style == "bun":
        r = 0.2 * h
        d.ellipse([cx - r, cy - 0.62 * h - r, cx + r, cy - 0.62 * h + r], fill=hair)
    elif style == "spiky":
        for k in range(5):
            x = cx + (k - 2) * 0.22 * fw
            d.polygon([(x - 0.16 * fw, cy - 0.3 * h), (x + 0.16 * fw, cy - 0.3 * h), (x, cy - 0.72 * h)], fill=hair)

    face_box = [cx - fw / 2, cy - h / 2, cx + fw / 2, cy + h / 2]
    if ident.face_shape == "wide":
        d.rounded_rectangle(face_box, radius=0.38 * fw, fill=skin)
    else:
        d.ellipse(face_box, fill=skin)
    # the hair on top of the head (a fringe for the bob), parted towards the turn
    cap_bottom = {"bob": 0.12, "curly": 0.2}.get(style, 0.22)
    cap = [cx - 0.56 * fw + dx * 0.3, cy - 0.6 * h, cx + 0.56 * fw + dx * 0.3, cy + (0.6 - 2 * cap_bottom) * h]
    d.chord(cap, start=180, end=360, fill=hair)

    ex, ey, er = ident.eye_spacing * fw, cy - 0.02 * h, 0.06 * h
    eye_colour = (25, 25, 35)
    for side in (-1, 1):
        x = cx + dx + side * ex / 2
        d.ellipse([x - er, ey - er, x + er, ey + er], fill=eye_colour)
        d.line([x - 1.6 * er, ey - 2.3 * er, x + 1.6 * er, ey - 2.3 * er], fill=hair, width=max(1, int(0.05 * h)))
    if ident.facial_hair == "beard":
        d.chord([cx - 0.5 * fw, cy - 0.2 * h, cx + 0.5 * fw, cy + 0.54 * h], start=0, end=180, fill=hair)
    elif ident.facial_hair == "moustache":
        d.rounded_rectangle(
            [cx + dx - 0.22 * fw, cy + 0.13 * h, cx + dx + 0.22 * fw, cy + 0.22 * h], radius=0.04 * h, fill=hair
        )
    mouth = (110, 30, 40) if ident.facial_hair == "beard" else (170, 60, 60)
    d.line(
        [cx + dx - 0.12 * fw, cy + 0.28 * h, cx + dx + 0.12 * fw, cy + 0.28 * h],
        fill=mouth,
        width=max(1, int(0.05 * h)),
    )
    frame = max(1, int(0.045 * h))
    if ident.glasses == "round":
        gr = 0.12 * h
        for side in (-1, 1):
            x = cx + dx + side * ex / 2
            d.ellipse([x - gr, ey - gr, x + gr, ey + gr], outline=(15, 15, 20), width=frame)
        d.line([cx + dx - ex / 2 + gr, ey, cx + dx + ex / 2 - gr, ey], fill=(15, 15, 20), width=frame)
    elif ident.glasses == "sunglasses":
        gw, gh = 0.14 * h, 0.09 * h
        for side in (-1, 1):
            x = cx + dx + side * ex / 2
            d.rounded_rectangle([x - gw, ey - gh, x + gw, ey + gh], radius=0.03 * h, fill=(12, 12, 16))
        d.line([cx + dx - ex / 2, ey - gh * 0.5, cx + dx + ex / 2, ey - gh * 0.5], fill=(12, 12, 16), width=frame)

    pivot = (cx, cy + 0.5 * h)
    # rotate only the square around the pivot that holds the head (a full-canvas rotation costs 10x more)
    r = int(math.ceil(1.5 * h)) + 2
    px, py = int(round(pivot[0])), int(round(pivot[1]))
    region = (px - r, py - r, px + r, py + r)
    rotated = layer.crop(region).rotate(person.tilt, resample=Image.Resampling.BILINEAR, center=(r, r))
    layer = Image.new("RGBA", (w, w), (0, 0, 0, 0))
    layer.paste(rotated, region[:2])
    # face box: the face plus the hair on top of it, rotated with the head
    x1, y1, x2, y2 = cx - 0.56 * fw, cy - 0.6 * h, cx + 0.56 * fw, cy + 0.5 * h
    a = math.radians(person.tilt)
    corners = []
    for x, y in ((x1, y1), (x2, y1), (x1, y2), (x2, y2)):
        rx, ry = x - pivot[0], y - pivot[1]  # PIL rotates counter-clockwise on screen (y down)
        corners.append((pivot[0] + rx * math.cos(a) + ry * math.sin(a), pivot[1] - rx * math.sin(a) + ry * math.cos(a)))
    xs, ys = [c[0] for c in corners], [c[1] for c in corners]
    return layer, [min(xs), min(ys), max(xs), max(ys)]


def _person_layer(person: PersonSpec, scene: SceneSpec, w: int) -> tuple[Image.Image, list[float]]:
    """The whole person (body, then the head over it), lit by the time of day and the side light."""
    ident = person.identity
    h = person.head * w
    cx, cy = person.x * w, person.y * w
    skin = _shift(SKIN_TONES[ident.skin], ident.skin_shift)
    cloth = CLOTHING_COLOURS[person.clothing]
    layer = Image.new("RGBA", (w, w), (0, 0, 0, 0))
    d = ImageDraw.Draw(layer)
    d.rectangle([cx - 0.17 * h, cy + 0.3 * h, cx + 0.17 * h, cy + 0.7 * h], fill=_shift(skin, (-25, -25, -20)))
    ys, tw = cy + 0.6 * h, 0.95 * h
    d.rounded_rectangle([cx - tw, ys, cx + tw, w + h], radius=0.4 * h, fill=cloth)
    light = person.clothing not in ("white", "yellow")
    contrast = (240, 240, 240) if light else (70, 70, 75)
    if person.garment == "shirt":
        d.polygon([(cx - 0.22 * h, ys), (cx + 0.22 * h, ys), (cx, ys + 0.32 * h)], fill=contrast)
    elif person.garment == "sweater":
        d.chord(
            [cx - 0.3 * h, ys - 0.12 * h, cx + 0.3 * h, ys + 0.14 * h], start=0, end=180, fill=_shift(cloth, (-60,) * 3)
        )
    else:  # jacket: open front over a contrasting shirt, with lapels
        d.rectangle([cx - 0.16 * h, ys, cx + 0.16 * h, w + h], fill=contrast)
        lapel = _shift(cloth, (-50,) * 3)
        for side in (-1, 1):
            d.polygon(
                [(cx + side * 0.16 * h, ys), (cx + side * 0.4 * h, ys), (cx + side * 0.16 * h, ys + 0.45 * h)],
                fill=lapel,
            )
    head, face_box = _head_layer(person, w)
    layer.alpha_composite(head)

    x1, y1, x2, y2 = layer.getbbox()  # light only the pixels the person covers
    arr = np.asarray(layer.crop((x1, y1, x2, y2))).astype(np.float32)
    tint = np.asarray(PERSON_TINT[scene.time], dtype=np.float32)
    side = np.clip((np.arange(x1, x2, dtype=np.float32) - cx) / (1.2 * h), -1, 1)  # (x2 - x1,)
    shade = 1.0 + 0.14 * person.shade * side  # brighter on the lit side
    arr[..., :3] = np.clip(arr[..., :3] * tint * shade[None, :, None], 0, 255)
    layer.paste(Image.fromarray(arr.round().astype(np.uint8), "RGBA"), (x1, y1))
    return layer, face_box


# ---------------------------------------------------------------------------------------------------- objects
def _object_layer(scene: SceneSpec, w: int) -> tuple[Image.Image | None, bool]:
    """The object on a transparent layer, and whether it stands in front of the people."""
    if scene.object == "none":
        return None, False
    layer = Image.new("RGBA", (w, w), (0, 0, 0, 0))
    d = ImageDraw.Draw(layer)
    s = scene.object_side
    edge = scene.people[-1] if s > 0 else scene.people[0]
    tint = PERSON_TINT[scene.time]
    if scene.object == "dog":
        x = w * (0.86 if s > 0 else 0.14)
        y = w * 0.86
        brown, dark = _shift((150, 95, 50), (0, 0, 0)), (80, 50, 30)
        d.ellipse([x - 0.11 * w, y - 0.06 * w, x + 0.11 * w, y + 0.05 * w], fill=brown)
        for lx in (-0.08, -0.04, 0.04, 0.08):
            d.rectangle([x + lx * w - 0.012 * w, y, x + lx * w + 0.012 * w, y + 0.12 * w], fill=brown)
        hx = x - s * 0.1 * w
        d.ellipse([hx - 0.06 * w, y - 0.14 * w, hx + 0.06 * w, y - 0.02 * w], fill=brown)
        d.ellipse([hx - 0.07 * w, y - 0.13 * w, hx - 0.03 * w, y - 0.05 * w], fill=dark)
        d.ellipse([hx + 0.03 * w, y - 0.13 * w, hx + 0.07 * w, y - 0.05 * w], fill=dark)
        front = True
    elif scene.object == "kite":
        x, y, r = w * (0.84 if s > 0 else 0.16), w * 0.14, w * 0.08
        d.line([x, y + r, x - s * 0.1 * w, w], fill=(60, 60, 60), width=max(1, w // 128))
        d.polygon([(x, y - r), (x + 0.7 * r, y), (x, y + r), (x - 0.7 * r, y)], fill=(250, 200, 30))
        d.line([x, y - r, x, y + r], fill=(200, 40, 160), width=max(1, w // 96))
        front = False
    else:  # umbrella, held beside and above the person at the edge
        x = (edge.x + s * 0.22) * w
        top = max(0.02 * w, (edge.y - edge.head * 0.62) * w - 0.2 * w)
        r = 0.2 * w
        d.line([x, top + 0.1 * w, x, w * 0.9], fill=(40, 40, 40), width=max(1, w // 96))
        d.chord([x - r, top, x + r, top + 0.2 * w], start=180, end=360, fill=(45, 45, 60))
        front = False
    arr = np.asarray(layer).astype(np.float32)
    arr[..., :3] = _tint(arr[..., :3], tint)
    return Image.fromarray(arr.round().astype(np.uint8), "RGBA"), front


def _weather_layer(scene: SceneSpec, w: int, rng: np.random.Generator) -> Image.Image | None:
    if scene.weather in ("clear", "fog"):
        return None
    layer = Image.new("RGBA", (w, w), (0, 0, 0, 0))
    d = ImageDraw.Draw(layer)
    if scene.weather == "rain":
        for _ in range(45):
            x, y, length = w * rng.uniform(-0.1, 1), w * rng.uniform(0, 1), w * 0.07
            d.line([x, y, x + 0.3 * length, y + length], fill=(205, 215, 235, 170), width=max(1, w // 128))
    else:
        for _ in range(60):
            x, y, r = w * rng.uniform(0, 1), w * rng.uniform(0, 1), w * rng.uniform(0.006, 0.011)
            d.ellipse([x - r, y - r, x + r, y + r], fill=(250, 250, 255, 230))
    return layer


def _down(image: Image.Image, size: int) -> Image.Image:
    return image.resize((size, size), Image.Resampling.BOX)


def render(scene: SceneSpec) -> Rendered:
    """Draws ``scene``: background, the object behind or in front, the people left to right, the weather, the light."""
    size = scene.size
    w = size * SUPERSAMPLE
    rng = np.random.default_rng(scene.variant)
    canvas = _sky(scene, w, rng).convert("RGBA")
    canvas.alpha_composite(_land(scene, w, rng))
    obj, obj_front = _object_layer(scene, w)
    if obj is not None and not obj_front:
        canvas.alpha_composite(obj)
    person_alphas, face_boxes = [], []
    for person in scene.people:
        layer, box = _person_layer(person, scene, w)
        canvas.alpha_composite(layer)
        person_alphas.append(np.asarray(_down(layer.getchannel("A"), size)))
        face_boxes.append([v / SUPERSAMPLE for v in box])
    if obj is not None and obj_front:
        canvas.alpha_composite(obj)
    weather = _weather_layer(scene, w, rng)
    if weather is not None:
        canvas.alpha_composite(weather)
    rgb = np.asarray(canvas.convert("RGB")).astype(np.float32)
    if scene.weather == "fog":
        rgb = 0.6 * rgb + 0.4 * np.array((205, 205, 212), dtype=np.float32)
    rgb *= scene.brightness
    image = _down(Image.fromarray(np.clip(rgb, 0, 255).round().astype(np.uint8)), size)

    segmap = np.zeros((size, size), dtype=np.uint8)
    object_box = None
    if obj is not None:
        alpha = np.asarray(_down(obj.getchannel("A"), size))
        segmap[alpha > 127] = OBJECT_SEGMENT
    for k, alpha in enumerate(person_alphas):
        segmap[alpha > 127] = k + 1
    if obj is not None and obj_front:
        segmap[np.asarray(_down(obj.getchannel("A"), size)) > 127] = OBJECT_SEGMENT
    if obj is not None:
        object_box = _box_of((segmap == OBJECT_SEGMENT).astype(np.uint8) * 255, 1.0)
    person_boxes = [_box_of((segmap == k + 1).astype(np.uint8) * 255, 1.0) for k in range(len(scene.people))]
    clipped = [[float(np.clip(v, 0, size)) for v in box] for box in face_boxes]
    return Rendered(image, segmap, clipped, person_boxes, object_box)


def object_label(scene: SceneSpec) -> str | None:
    return OBJECT_LABELS.get(scene.object)
