"""The embedded FER2013 stand-in: procedurally drawn 48×48 grayscale faces, seven expressions.

Each face is drawn with OpenCV on a 96×96 canvas in a canonical pose (outline,
hair, neck, brows, eyes, nose, mouth), then rotated, scaled and shifted into a
48×48 image over a textured background, with random lighting, blur and noise.

An expression is a set of targets for brow height and slant, eye openness and
mouth width, curve, opening and asymmetry (``_EXPRESSIONS``). Each face shows
its expression at a random intensity on top of its own random features, so
weak expressions drift towards Neutral and the pairs that share cues (Fear and
Surprise, Angry and Disgust, Sad and Neutral) are confusable, as in the real
data, while a small CNN still learns the classes clearly.

Class balance and the Usage splits follow the real file (Disgust is rare).
``write_sample`` writes them as the real ``fer2013.csv`` (stages/datasets/fer2013_csv.py).
Everything comes from one seeded NumPy generator: same seed, same bytes.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from stages.datasets.fer2013_csv import (
    EMOTIONS,
    FER2013_CLASS_COUNTS,
    HEADER,
    SIDE,
    USAGES,
    format_rows,
)

CANVAS = 2 * SIDE  # drawn at twice the size, then area-downsampled: smooth edges
_SHIFT = 4  # OpenCV fixed-point bits: sub-pixel coordinates for the drawing calls
_CHUNK = 512  # faces drawn per batch; a constant, so the random stream never depends on sizes

# Expression targets at full intensity. brow_raise/brow_inner: pixels up (inner
# end of the brow, relative to the outer end); eye_open: half-height of the eye;
# mouth_curve: corners up (+) or down (-); mouth_open: height of the opening;
# mouth_asym: one corner raised (a sneer); teeth: chance of showing teeth;
# wrinkle: nose wrinkles. All on the 96-pixel canvas.
_FIELDS = (
    "brow_raise",
    "brow_inner",
    "brow_arch",
    "eye_open",
    "mouth_width",
    "mouth_curve",
    "mouth_open",
    "mouth_asym",
    "teeth",
    "wrinkle",
)
_NEUTRAL = dict(
    brow_raise=0.0,
    brow_inner=0.0,
    brow_arch=1.5,
    eye_open=4.2,
    mouth_width=12.0,
    mouth_curve=0.0,
    mouth_open=0.0,
    mouth_asym=0.0,
    teeth=0.0,
    wrinkle=0.0,
)
_EXPRESSIONS = {
    "Angry": dict(
        brow_raise=-2.5,
        brow_inner=-7.0,
        brow_arch=0.0,
        eye_open=3.2,
        mouth_width=10.5,
        mouth_curve=-2.5,
        mouth_open=1.0,
        teeth=0.5,
        wrinkle=0.3,
    ),
    "Disgust": dict(
        brow_raise=-2.0,
        brow_inner=-4.0,
        brow_arch=0.0,
        eye_open=2.4,
        mouth_width=12.0,
        mouth_curve=-3.0,
        mouth_open=2.5,
        mouth_asym=6.0,
        teeth=0.6,
        wrinkle=1.0,
    ),
    "Fear": dict(
        brow_raise=4.5,
        brow_inner=5.0,
        brow_arch=0.0,
        eye_open=7.0,
        mouth_width=15.0,
        mouth_curve=-3.0,
        mouth_open=6.0,
        teeth=0.7,
    ),
    "Happy": dict(
        brow_raise=1.0, brow_arch=2.5, eye_open=2.6, mouth_width=16.0, mouth_curve=7.5, mouth_open=4.5, teeth=0.9
    ),
    "Sad": dict(brow_raise=0.0, brow_inner=6.0, brow_arch=-1.0, eye_open=3.0, mouth_width=12.0, mouth_curve=-6.0),
    "Surprise": dict(brow_raise=7.0, brow_inner=1.0, brow_arch=4.0, eye_open=7.5, mouth_width=8.0, mouth_open=13.0),
    "Neutral": {},
}
_TARGETS = np.array([[{**_NEUTRAL, **_EXPRESSIONS[e]}[f] for f in _FIELDS] for e in EMOTIONS])
_BASE = np.array([_NEUTRAL[f] for f in _FIELDS])
# Person-to-person spread of each field, added on top of the expression.
_JITTER = np.array([1.2, 1.5, 0.8, 0.8, 1.5, 1.3, 0.8, 1.0, 0.0, 0.0])


def split_labels(rows: dict[str, int], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Labels and usage ids for ``rows`` faces per split, FER2013's class balance in each split.

    Each split gets its exact proportional share of every class (largest
    remainder), shuffled; splits follow each other as in the real file.
    """
    share = np.asarray(FER2013_CLASS_COUNTS, dtype=np.float64) / sum(FER2013_CLASS_COUNTS)
    labels, usages = [], []
    for usage_id, usage in enumerate(USAGES):
        n = rows[usage]
        exact = share * n
        counts = np.floor(exact).astype(int)
        counts[np.argsort(-(exact - counts), kind="stable")[: n - counts.sum()]] += 1
        split = np.repeat(np.arange(len(EMOTIONS)), counts)
        labels.append(rng.permutation(split))
        usages.append(np.full(n, usage_id))
    return np.concatenate(labels).astype(np.uint8), np.concatenate(usages).astype(np.uint8)


def draw_faces(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Faces (n, 48, 48) uint8 showing the expressions ``labels`` (0–6)."""
    n = len(labels)

    def u(lo: float, hi: float) -> np.ndarray:  # one vector of n draws
        return rng.uniform(lo, hi, n)

    intensity = u(0.35, 1.0)
    expression = _BASE + intensity[:, None] * (_TARGETS[labels] - _BASE) + rng.normal(size=(n, len(_FIELDS))) * _JITTER
    person = dict(
        face_rx=u(25, 31),
        face_ry=u(33, 39),
        eye_dx=u(10.5, 13.5),
        eye_y=u(40, 45),
        brow_gap=u(7, 10),
        mouth_y=u(70, 76),
        eye_w=u(5, 7),
        brow_thick=u(3, 6),
        lip_thick=u(2, 4),
        skin=u(110, 220),
        ink=u(55, 120),
        hair_tone=u(10, 90),
        hair=rng.integers(0, 4, n),
        side=rng.choice([-1.0, 1.0], n),
        teeth_roll=u(0, 1),
    )
    pose = dict(angle=rng.normal(0, 7, n), scale=u(0.85, 1.12), dx=rng.normal(0, 1.8, n), dy=rng.normal(0, 1.8, n))
    light = dict(
        bg=u(20, 235),
        bg_tilt=u(-50, 50),
        bg_dir=u(0, 2 * np.pi),
        shade=u(0, 0.45),
        shade_dir=u(0, 2 * np.pi),
        contrast=u(0.65, 1.2),
        brightness=u(-30, 30),
        blur=u(0.0, 1.0),
        noise=u(1.0, 9.0),
    )
    texture = rng.normal(0, 18, (n, 6, 6))
    noise = rng.standard_normal((n, SIDE, SIDE))

    yy, xx = np.mgrid[0:SIDE, 0:SIDE].astype(np.float64) / SIDE - 0.5
    faces = np.empty((n, SIDE, SIDE), dtype=np.uint8)
    for i in range(n):
        p = {k: v[i] for k, v in person.items()}
        e = dict(zip(_FIELDS, expression[i], strict=True))
        face, mask = _draw_canonical(p, e)
        matrix = cv2.getRotationMatrix2D((CANVAS / 2, CANVAS / 2 + 2), float(pose["angle"][i]), float(pose["scale"][i]))
        matrix[:, 2] += (2 * pose["dx"][i], 2 * pose["dy"][i])
        face = cv2.resize(
            cv2.warpAffine(face, matrix, (CANVAS, CANVAS), flags=cv2.INTER_LINEAR),
            (SIDE, SIDE),
            interpolation=cv2.INTER_AREA,
        )
        mask = cv2.resize(
            cv2.warpAffine(mask, matrix, (CANVAS, CANVAS), flags=cv2.INTER_LINEAR),
            (SIDE, SIDE),
            interpolation=cv2.INTER_AREA,
        )
        ramp = np.cos(light["bg_dir"][i]) * xx + np.sin(light["bg_dir"][i]) * yy
        background = (
            light["bg"][i]
            + light["bg_tilt"][i] * ramp
            + cv2.resize(texture[i], (SIDE, SIDE), interpolation=cv2.INTER_CUBIC)
        )
        image = background * (1 - mask) + face * mask
        shade = np.cos(light["shade_dir"][i]) * xx + np.sin(light["shade_dir"][i]) * yy
        image = image * (1 + light["shade"][i] * shade)  # light from one side
        image = (image - 128) * light["contrast"][i] + 128 + light["brightness"][i]
        if light["blur"][i] > 0.3:
            image = cv2.GaussianBlur(image, (0, 0), float(light["blur"][i]))
        image += noise[i] * light["noise"][i]
        faces[i] = np.clip(np.rint(image), 0, 255)
    return faces


def _pt(x: float, y: float) -> tuple[int, int]:
    return round(x * (1 << _SHIFT)), round(y * (1 << _SHIFT))


def _poly(points: np.ndarray) -> np.ndarray:
    return np.rint(points * (1 << _SHIFT)).astype(np.int32).reshape(-1, 1, 2)


def _ellipse(
    img: np.ndarray,
    center: tuple[float, float],
    axes: tuple[float, float],
    color: float,
    thickness: int = -1,
    start: float = 0,
    end: float = 360,
) -> None:
    cv2.ellipse(
        img,
        _pt(*center),
        _pt(max(axes[0], 0.5), max(axes[1], 0.5)),
        0,
        start,
        end,
        color,
        thickness,
        cv2.LINE_AA,
        _SHIFT,
    )


def _draw_canonical(p: dict[str, float], e: dict[str, float]) -> tuple[np.ndarray, np.ndarray]:
    """One upright face on the 96×96 canvas: (intensity image, coverage mask), float32."""
    face = np.zeros((CANVAS, CANVAS), dtype=np.float32)
    mask = np.zeros_like(face)
    cx, cy = CANVAS / 2, CANVAS / 2 + 2
    skin, ink, hair_tone = p["skin"], p["skin"] - p["ink"], p["hair_tone"]
    rx, ry = p["face_rx"], p["face_ry"]

    # Neck and shoulders first, then hair behind the face, then the face.
    neck = np.array(
        [
            [cx - rx * 0.55, cy + ry * 0.6],
            [cx + rx * 0.55, cy + ry * 0.6],
            [cx + rx * 0.7, CANVAS],
            [cx - rx * 0.7, CANVAS],
        ]
    )
    for img, color in ((face, skin * 0.8), (mask, 1.0)):
        cv2.fillPoly(img, [_poly(neck)], color, cv2.LINE_AA, _SHIFT)
    if p["hair"] > 0:  # 0: no hair visible; 1–3: short, medium, long
        length = (0.0, 0.0, 0.3, 0.6)[int(p["hair"])]
        for img, color in ((face, hair_tone), (mask, 1.0)):
            _ellipse(img, (cx, cy - ry * 0.12), (rx * (1.1 + 0.2 * length), ry * (0.95 + 0.1 * length)), color)
    for img, color in ((face, skin), (mask, 1.0)):
        _ellipse(img, (cx, cy), (rx, ry), color)
    if p["hair"] > 0:  # fringe over the forehead
        _ellipse(face, (cx, cy - ry * 0.95), (rx * 0.95, ry * 0.32), hair_tone)

    for sign in (-1.0, 1.0):
        ex, ey = cx + sign * p["eye_dx"], p["eye_y"]
        # Brow: inner end, middle, outer end.
        by = ey - p["brow_gap"] - e["brow_raise"]
        brow = np.array(
            [
                [cx + sign * (p["eye_dx"] - 6), by - e["brow_inner"]],
                [ex + sign * 1, by - e["brow_arch"] - 0.4 * e["brow_inner"]],
                [ex + sign * 8, by + 1],
            ]
        )
        cv2.polylines(face, [_poly(brow)], False, ink, max(1, round(p["brow_thick"])), cv2.LINE_AA, _SHIFT)
        # Eye: white, iris, upper lid; a nearly closed eye is just the lid line.
        h = max(e["eye_open"], 0.6)
        if h > 1.8:
            _ellipse(face, (ex, ey), (p["eye_w"], h), min(skin + 35, 255))
            _ellipse(face, (ex, ey), (min(2.8, h), min(2.8, h)), ink * 0.6)
        _ellipse(face, (ex, ey), (p["eye_w"], h), ink * 0.8, 2, 180, 360)
        if e["wrinkle"] > 0.5:  # nose wrinkles of disgust (and some anger)
            x0 = cx + sign * 2.5
            cv2.line(face, _pt(x0, ey + 3), _pt(x0 + sign * 3, ey + 6), ink * 1.1, 1, cv2.LINE_AA, _SHIFT)

    # Nose: a shaded ridge and the nostrils.
    ny = (p["eye_y"] + p["mouth_y"]) / 2 + 3
    cv2.polylines(
        face,
        [_poly(np.array([[cx + 1, p["eye_y"] + 4], [cx - 3, ny], [cx + 2, ny + 1]]))],
        False,
        (skin + ink) / 2,
        2,
        cv2.LINE_AA,
        _SHIFT,
    )

    # Mouth: a curve through the corners, opened into an oval; corners up = smile.
    w = max(e["mouth_width"], 4.0)
    t = np.linspace(-1, 1, 17)
    midline = p["mouth_y"] - e["mouth_curve"] * (t**2 - 0.3) - e["mouth_asym"] * np.clip(p["side"] * t, 0, None) * 0.8
    opening = max(e["mouth_open"], 0.0) * np.sqrt(1 - t**2)
    upper = np.stack([cx + w * t, midline - 0.35 * opening], axis=1)
    lower = np.stack([cx + w * t, midline + 0.65 * opening], axis=1)
    thick = max(1, round(p["lip_thick"]))
    if e["mouth_open"] > 1.2:
        cv2.fillPoly(face, [_poly(np.concatenate([upper, lower[::-1]]))], ink * 0.5, cv2.LINE_AA, _SHIFT)
        if p["teeth_roll"] < e["teeth"] and e["mouth_open"] > 2.5:  # a band of teeth under the upper lip
            below = upper + np.stack([np.zeros_like(t), np.minimum(0.45 * opening, 3.0)], axis=1)
            cv2.fillPoly(face, [_poly(np.concatenate([upper, below[::-1]]))], min(skin + 30, 250), cv2.LINE_AA, _SHIFT)
        cv2.polylines(face, [_poly(upper), _poly(lower)], False, ink, thick, cv2.LINE_AA, _SHIFT)
    else:
        closed = np.stack([cx + w * t, midline], axis=1)
        cv2.polylines(face, [_poly(closed)], False, ink, thick + 1, cv2.LINE_AA, _SHIFT)
    return face, mask


def iter_sample_rows(rows: dict[str, int], seed: int) -> Iterator[bytes]:
    """The sample as CSV text: the header, then chunks of rows, all from ``seed``."""
    rng = np.random.default_rng(seed)
    labels, usages = split_labels(rows, rng)
    yield HEADER.encode()
    for start in range(0, len(labels), _CHUNK):
        part = slice(start, start + _CHUNK)
        yield format_rows(labels[part], draw_faces(labels[part], rng).reshape(-1, SIDE * SIDE), usages[part])


def write_sample(destination: Path, seed: int, *, rows: dict[str, int]) -> None:
    """Write a sample ``fer2013.csv`` at ``destination`` with ``rows`` faces per Usage split."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    with destination.open("wb") as f:
        for block in iter_sample_rows(rows, seed):
            f.write(block)
