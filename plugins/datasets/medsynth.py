"""MedSynth: the embedded default dataset, generated procedurally (numpy only, no downloads).

Two plugins live here:

* :class:`MedSynthVQA` (``medsynth``, task ``vqa``): synthetic "scans" with questions and answers
  whose answers depend on the image. Answers are balanced per question string (every exact
  question text has a uniform answer distribution over its answer set), so a question-only model
  sits at chance on every template.
* :class:`MedSynthCaptions` (``medsynth-captions``, task ``pretrain``): image-caption pairs for
  pre-training, drawn from seed streams disjoint from the VQA splits (pre-training never sees a
  VQA test image).

Everything is a pure function of ``(seed, options, GENERATOR_VERSION)``. See ``docs/medsynth.md``.

Scene model
-----------
A scene has a modality (ct, mri, x-ray, ultrasound; uniform), a body region (chest, abdomen, head;
uniform), a lesion count (0-3; uniform), one lesion polarity (bright/dark) and, per lesion, an
organ, a half of that organ (upper/lower) and a size (small/large). Anatomy is drawn in normalised
coordinates ``x, y`` in ``[-1, 1]`` (``y`` down) in radiological convention: the patient's left is
on the image's right. Organs: chest = right lung, left lung; abdomen = liver, spleen, right kidney,
left kidney; head = right hemisphere, left hemisphere. Every organ has a side (left/right).
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from collections import defaultdict
from typing import Any

import numpy as np

from umdbench.api import CheckReport, DatasetPlugin, Option, Record

__all__ = ["MedSynthVQA", "MedSynthCaptions", "GENERATOR_VERSION", "render_scene", "sample_scene", "TEMPLATES"]

GENERATOR_VERSION = "medsynth-1"

MODALITIES = ("ct", "mri", "x-ray", "ultrasound")
MODALITY_DISPLAY = {"ct": "CT", "mri": "MRI", "x-ray": "X-ray", "ultrasound": "ultrasound"}
REGIONS = ("chest", "abdomen", "head")
# organ -> (cx, cy, rx, ry, side); x is image coordinates (patient right = image left)
ORGANS: dict[str, dict[str, tuple[float, float, float, float, str]]] = {
    "chest": {
        "right lung": (-0.38, -0.02, 0.28, 0.44, "right"),
        "left lung": (0.38, -0.02, 0.28, 0.44, "left"),
    },
    "abdomen": {
        "liver": (-0.36, -0.12, 0.36, 0.30, "right"),
        "spleen": (0.46, -0.14, 0.17, 0.24, "left"),
        "right kidney": (-0.33, 0.33, 0.15, 0.24, "right"),
        "left kidney": (0.33, 0.33, 0.15, 0.24, "left"),
    },
    "head": {
        "right hemisphere": (-0.29, 0.0, 0.27, 0.62, "right"),
        "left hemisphere": (0.29, 0.0, 0.27, 0.62, "left"),
    },
}
ALL_ORGANS = tuple(o for r in REGIONS for o in ORGANS[r])
ORGAN_REGION = {o: r for r in REGIONS for o in ORGANS[r]}
LESION_RADIUS = {"small": (0.055, 0.07), "large": (0.095, 0.115)}
COUNT_WORDS = ("0", "1", "2", "3")

# Seed streams: VQA splits and caption splits never share an image.
STREAMS = {
    ("vqa", "train"): 1,
    ("vqa", "val"): 2,
    ("vqa", "test"): 3,
    ("captions", "train"): 11,
    ("captions", "val"): 12,
}


# ----------------------------------------------------------------------------------------------
# Scene sampling
# ----------------------------------------------------------------------------------------------
def _image_rng(seed: int, stream: int, index: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), int(stream), int(index)])))


def sample_scene(rng: np.random.Generator) -> dict[str, Any]:
    """Draw the semantic content of one image (what questions and captions talk about)."""
    modality = MODALITIES[int(rng.integers(4))]
    region = REGIONS[int(rng.integers(3))]
    count = int(rng.integers(4))
    polarity = "bright" if rng.random() < 0.5 else "dark"
    organs = list(ORGANS[region])
    same_organ = rng.random() < 0.6  # often all lesions in one organ ("which organ is abnormal?")
    first_organ = organs[int(rng.integers(len(organs)))]
    lesions: list[dict[str, Any]] = []
    for k in range(count):
        for _attempt in range(40):
            if _attempt < 20 and (k == 0 or same_organ):
                organ = first_organ
            else:
                organ = organs[int(rng.integers(len(organs)))]
            cx, cy, rx, ry, side = ORGANS[region][organ]
            size = "small" if rng.random() < 0.5 else "large"
            r = float(rng.uniform(*LESION_RADIUS[size]))
            half = "upper" if rng.random() < 0.5 else "lower"
            # keep the lesion inside the organ and clearly in one half of it
            dy = float(rng.uniform(0.25, 0.62)) * (ry - 0.6 * r)
            y = cy - dy if half == "upper" else cy + dy
            x = cx + float(rng.uniform(-0.45, 0.45)) * max(rx - r, 0.02)
            if all((x - o["x"]) ** 2 + (y - o["y"]) ** 2 > (r + o["r"] + 0.035) ** 2 for o in lesions):
                lesions.append({"organ": organ, "side": side, "half": half, "size": size, "x": x, "y": y, "r": r})
                break
    # global pose jitter (applied when rendering; attributes are in anatomy coordinates)
    pose = {
        "scale": float(rng.uniform(0.92, 1.04)),
        "tx": float(rng.uniform(-0.05, 0.05)),
        "ty": float(rng.uniform(-0.05, 0.05)),
        "rot": float(rng.uniform(-0.08, 0.08)),
        "wobble_phase": float(rng.uniform(0, 2 * math.pi)),
        "shape": [float(v) for v in rng.uniform(-1, 1, size=8)],
    }
    return {"modality": modality, "region": region, "polarity": polarity, "lesions": lesions, "pose": pose}


def scene_facts(scene: dict[str, Any]) -> dict[str, Any]:
    les = scene["lesions"]
    return {
        "count": len(les),
        "organs": sorted({l["organ"] for l in les}),
        "sides": sorted({l["side"] for l in les}),
        "halves": sorted({l["half"] for l in les}),
    }


# ----------------------------------------------------------------------------------------------
# Rendering (vectorised numpy, one image at a time)
# ----------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=8)
def _base_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    c = (np.arange(size, dtype=np.float32) + 0.5) / size * 2.0 - 1.0
    return np.meshgrid(c, c)  # X (columns), Y (rows)


class _Canvas:
    """Pixel grid in anatomy coordinates. Masks are computed inside their bounding box only and
    returned as ``(slices, sub-mask)`` pairs; ``FULL`` is the whole image."""

    def __init__(self, size: int, pose: dict[str, Any], edge_px: float):
        X0, Y0 = _base_grid(size)
        s, c_, s_ = pose["scale"], math.cos(pose["rot"]), math.sin(pose["rot"])
        Xs, Ys = (X0 - pose["tx"]) / s, (Y0 - pose["ty"]) / s
        self.X = (c_ * Xs + s_ * Ys).astype(np.float32)
        self.Y = (-s_ * Xs + c_ * Ys).astype(np.float32)
        self.pose = (s, c_, s_, pose["tx"], pose["ty"])
        self.size = size
        self.px = 2.0 / size / s  # one pixel in anatomy units
        self.edge = edge_px * self.px
        self.shape = pose["shape"]
        self.FULL = (slice(0, size), slice(0, size))

    def _bbox(self, cx: float, cy: float, radius: float) -> tuple[slice, slice]:
        s, c_, s_, tx, ty = self.pose
        x0 = (c_ * cx - s_ * cy) * s + tx  # anatomy -> image coordinates
        y0 = (s_ * cx + c_ * cy) * s + ty
        half = self.size / 2.0
        col, row, rad = (x0 + 1.0) * half - 0.5, (y0 + 1.0) * half - 0.5, radius * s * half + 2.0
        return (
            slice(max(int(row - rad), 0), max(min(int(row + rad) + 2, self.size), 0)),
            slice(max(int(col - rad), 0), max(min(int(col + rad) + 2, self.size), 0)),
        )

    def dist(self, cx, cy, rx, ry, wobble: float = 0.0, k: int = 0, sl=None) -> np.ndarray:
        """Normalised elliptic distance (1 on the boundary), optionally with a wobbly outline."""
        X, Y = (self.X, self.Y) if sl is None else (self.X[sl], self.Y[sl])
        dx = (X - cx) / rx
        dy = (Y - cy) / ry
        d = np.sqrt(dx * dx + dy * dy)
        if wobble:
            a = self.shape[k % 8]
            b = self.shape[(k + 3) % 8]
            # cheap angular modulation without arctan2: cos/sin of the angle are dx/d, dy/d
            inv = 1.0 / np.maximum(d, 1e-3)
            cos_t, sin_t = dx * inv, dy * inv
            cos2 = cos_t * cos_t - sin_t * sin_t
            sin2 = 2 * sin_t * cos_t
            d = d / (1.0 + wobble * (a * cos2 + b * sin2 + 0.5 * a * b * cos_t))
        return d

    def mask(self, cx, cy, rx, ry, wobble: float = 0.0, k: int = 0, edge: float | None = None):
        e_abs = self.edge if edge is None else edge
        sl = self._bbox(cx, cy, max(rx, ry) * (1.0 + 2.0 * abs(wobble)) + e_abs)
        d = self.dist(cx, cy, rx, ry, wobble, k, sl)
        return sl, np.clip((1.0 - d) * (min(rx, ry) / e_abs) + 0.5, 0.0, 1.0)

    def full(self, layer) -> np.ndarray:
        sl, m = layer
        out = np.zeros((self.size, self.size), np.float32)
        out[sl] = m
        return out


def _paint(img: np.ndarray, layer, value: float) -> None:
    sl, m = layer
    sub = img[sl]
    sub += m * (value - sub)


def _anatomy_layers(cv: _Canvas, region: str, modality: str) -> list[tuple[str, np.ndarray]]:
    """(tissue, soft mask) layers in painting order, for one body region."""
    L: list[tuple[str, np.ndarray]] = []
    if region == "chest":
        L.append(("fat", cv.mask(0.0, 0.05, 0.9, 0.66, 0.04, 0)))
        L.append(("soft", cv.mask(0.0, 0.05, 0.84, 0.6, 0.04, 0)))
        if modality == "x-ray":  # ribs: curved stripes over the chest
            ribs = 0.5 + 0.5 * np.cos((cv.Y + 0.12 * cv.X * cv.X) * 14.0)
            L.append(("rib", (cv.FULL, (ribs > 0.75).astype(np.float32) * cv.full(cv.mask(0.0, 0.05, 0.84, 0.6)))))
        for i, (name, (cx, cy, rx, ry, _)) in enumerate(ORGANS["chest"].items()):
            L.append(("lung", cv.mask(cx, cy, rx, ry, 0.06, 1 + i)))
        L.append(("heart", cv.mask(0.08, 0.14, 0.2, 0.17, 0.05, 3)))
        L.append(("bone", cv.mask(0.0, 0.5, 0.09, 0.08)))  # vertebra
        L.append(("bone", cv.mask(0.0, -0.5, 0.07, 0.05)))  # sternum
    elif region == "abdomen":
        L.append(("fat", cv.mask(0.0, 0.05, 0.92, 0.68, 0.04, 0)))
        L.append(("soft", cv.mask(0.0, 0.05, 0.85, 0.62, 0.04, 0)))
        L.append(("bowel", cv.mask(0.05, 0.02, 0.22, 0.16, 0.2, 5)))
        org = ORGANS["abdomen"]
        for i, name in enumerate(("liver", "spleen")):
            cx, cy, rx, ry, _ = org[name]
            L.append((name, cv.mask(cx, cy, rx, ry, 0.08, 2 + i)))
        for name in ("right kidney", "left kidney"):
            cx, cy, rx, ry, _ = org[name]
            L.append(("kidney", cv.mask(cx, cy, rx, ry, 0.05, 4)))
            L.append(("sinus", cv.mask(cx, cy, rx * 0.35, ry * 0.45)))
        L.append(("bone", cv.mask(0.0, 0.45, 0.1, 0.09)))
        L.append(("vessel", cv.mask(0.08, 0.28, 0.045, 0.045)))
    else:  # head
        L.append(("scalp", cv.mask(0.0, 0.0, 0.74, 0.9, 0.02, 0)))
        L.append(("skull", cv.mask(0.0, 0.0, 0.7, 0.86, 0.02, 0)))
        L.append(("brain", cv.mask(0.0, 0.0, 0.63, 0.78, 0.02, 0)))
        sl, m = cv.mask(0.0, 0.0, 0.6, 0.74)
        L.append(("csf", (sl, np.clip(1.0 - np.abs(cv.X[sl]) / (1.2 * cv.px), 0, 1) * m)))  # midline
        L.append(("csf", cv.mask(-0.07, -0.05, 0.05, 0.16, 0.1, 6)))
        L.append(("csf", cv.mask(0.07, -0.05, 0.05, 0.16, 0.1, 7)))
    return L


# tissue intensities per modality (0..1); x-ray values are attenuation coefficients
TISSUE = {
    "ct": dict(
        bg=0.0,
        fat=0.3,
        soft=0.44,
        rib=0.9,
        lung=0.26,
        heart=0.52,
        bone=0.97,
        bowel=0.36,
        liver=0.58,
        spleen=0.5,
        kidney=0.66,
        sinus=0.4,
        vessel=0.62,
        scalp=0.44,
        skull=0.98,
        brain=0.48,
        csf=0.2,
    ),
    "mri": dict(
        bg=0.02,
        fat=0.88,
        soft=0.36,
        rib=0.36,
        lung=0.24,
        heart=0.22,
        bone=0.1,
        bowel=0.7,
        liver=0.3,
        spleen=0.52,
        kidney=0.62,
        sinus=0.85,
        vessel=0.05,
        scalp=0.85,
        skull=0.08,
        brain=0.55,
        csf=0.95,
    ),
    "x-ray": dict(
        bg=0.0,
        fat=0.85,
        soft=1.0,
        rib=1.6,
        lung=0.45,
        heart=1.3,
        bone=2.2,
        bowel=0.5,
        liver=1.15,
        spleen=1.08,
        kidney=1.05,
        sinus=1.0,
        vessel=1.1,
        scalp=0.9,
        skull=2.4,
        brain=1.0,
        csf=0.9,
    ),
    "ultrasound": dict(
        bg=0.0,
        fat=0.3,
        soft=0.32,
        rib=0.32,
        lung=0.55,
        heart=0.08,
        bone=0.9,
        bowel=0.45,
        liver=0.5,
        spleen=0.42,
        kidney=0.26,
        sinus=0.75,
        vessel=0.04,
        scalp=0.4,
        skull=0.9,
        brain=0.3,
        csf=0.08,
    ),
}
EDGE_PX = {"ct": 0.6, "mri": 2.2, "x-ray": 2.0, "ultrasound": 1.2}
LESION_DELTA = {"ct": (0.33, -0.3), "mri": (0.35, -0.28), "x-ray": (0.65, -0.55), "ultrasound": (0.4, -0.3)}


def render_scene(scene: dict[str, Any], size: int, rng: np.random.Generator) -> np.ndarray:
    """Render a scene to an ``HxWx3`` uint8 greyscale image of ``size`` pixels."""
    modality, region = scene["modality"], scene["region"]
    cv = _Canvas(size, scene["pose"], EDGE_PX[modality])
    tv = TISSUE[modality]
    layers = _anatomy_layers(cv, region, modality)
    bright, dark = LESION_DELTA[modality]
    delta = bright if scene["polarity"] == "bright" else dark
    lesion_m = np.zeros((size, size), np.float32)
    for l in scene["lesions"]:
        sl, m = cv.mask(l["x"], l["y"], l["r"], l["r"], edge=max(cv.edge, 0.8 * cv.px))
        lesion_m[sl] = np.maximum(lesion_m[sl], m)

    if modality == "x-ray":
        # projection: attenuation integrated through an ellipsoidal body, denser = brighter
        body_d = cv.dist(0.0, 0.05, 0.9, 0.68) if region != "head" else cv.dist(0.0, 0.0, 0.74, 0.9)
        thick = np.sqrt(np.clip(1.0 - body_d * body_d, 0.0, 1.0))
        att = np.zeros((size, size), np.float32)
        for tissue, m in layers:
            _paint(att, m, tv[tissue])
        att = att * (0.35 + 0.65 * thick) + lesion_m * delta
        img = 1.0 - np.exp(-1.3 * np.clip(att, 0.0, None))
        img = _box_blur(img, 1) + rng.normal(0.0, 0.02, img.shape).astype(np.float32)
    else:
        img = np.full((size, size), tv["bg"], np.float32)
        for tissue, m in layers:
            _paint(img, m, tv[tissue])
        img += lesion_m * delta
        if modality == "ct":
            img += rng.normal(0.0, 0.035, img.shape).astype(np.float32)
        elif modality == "mri":
            a, b = rng.uniform(-0.3, 0.3, size=2)
            img *= 1.0 + a * cv.X + b * cv.Y  # coil bias field
            n1 = rng.normal(0.0, 0.025, img.shape).astype(np.float32)
            n2 = rng.normal(0.0, 0.025, img.shape).astype(np.float32)
            img = np.sqrt((img + n1) ** 2 + n2 * n2)  # Rician magnitude noise
        else:  # ultrasound: speckle, depth attenuation, fan-shaped field of view
            X0, Y0 = _base_grid(size)
            # multiplicative speckle (Rayleigh, mean 1), partly smoothed so it reads as grain
            sp = rng.rayleigh(math.sqrt(2.0 / math.pi), (size, size)).astype(np.float32)
            sp = 1.0 + 0.55 * (_box_blur(sp, 1) - 1.0) + 0.15 * (sp - 1.0)
            ax, ay = 0.0, -1.25
            rr = np.sqrt((X0 - ax) ** 2 + (Y0 - ay) ** 2)
            ang = np.abs(X0 - ax) / np.maximum(rr, 1e-3)
            fan = np.clip((math.sin(math.radians(46)) - ang) * size * 0.5, 0, 1) * np.clip(
                (2.35 - rr) * size * 0.25, 0, 1
            )
            fan *= np.clip((rr - 0.2) * size * 0.25, 0, 1)
            img = np.clip(img + 0.12, 0, None) * sp * np.exp(-0.35 * (rr - 0.2)) * fan
    img = np.clip(img, 0.0, 1.0)
    g = (img * 255.0 + 0.5).astype(np.uint8)
    return np.ascontiguousarray(np.repeat(g[:, :, None], 3, axis=2))


def _box_blur(img: np.ndarray, r: int) -> np.ndarray:
    if r <= 0:
        return img
    p = np.pad(img, r, mode="edge")
    k = 2 * r + 1
    c = np.cumsum(np.cumsum(np.pad(p, ((1, 0), (1, 0))), 0), 1)
    return (c[k:, k:] - c[:-k, k:] - c[k:, :-k] + c[:-k, :-k]) / (k * k)


# ----------------------------------------------------------------------------------------------
# Questions
# ----------------------------------------------------------------------------------------------
YES_NO = ("yes", "no")


def _yn(b: bool) -> str:
    return "yes" if b else "no"


def _art(word: str) -> str:
    return "an" if word[0].lower() in "aeiou" or word in ("MRI", "X-ray") else "a"


# each template: (scene, facts, rng) -> (group, question, answer, answer_set) or None if not askable
def _t_is_modality(s, f, rng):
    m = s["modality"] if rng.random() < 0.5 else [x for x in MODALITIES if x != s["modality"]][int(rng.integers(3))]
    d = MODALITY_DISPLAY[m]
    return f"is_modality:{m}", f"Is this {_art(d)} {d} image?", _yn(m == s["modality"]), YES_NO


def _t_is_region(s, f, rng):
    r = s["region"] if rng.random() < 0.5 else [x for x in REGIONS if x != s["region"]][int(rng.integers(2))]
    return f"is_region:{r}", f"Does this image show the {r}?", _yn(r == s["region"]), YES_NO


def _t_lesion_in(s, f, rng):
    organs = list(ORGANS[s["region"]])
    o = organs[int(rng.integers(len(organs)))]
    return f"lesion_in:{o}", f"Is there a lesion in the {o}?", _yn(o in f["organs"]), YES_NO


def _t_any(s, f, rng):
    return "any_lesion", "Are there any lesions?", _yn(f["count"] > 0), YES_NO


def _t_more_than_two(s, f, rng):
    return "more_than_two", "Are there more than two lesions?", _yn(f["count"] > 2), YES_NO


def _t_bright(s, f, rng):
    if f["count"] == 0:
        return None
    return "bright", "Is the lesion brighter than the surrounding tissue?", _yn(s["polarity"] == "bright"), YES_NO


def _t_modality(s, f, rng):
    return "modality", "What modality is this?", s["modality"], MODALITIES


def _t_region(s, f, rng):
    return "region", "What body region is shown?", s["region"], REGIONS


def _t_organ(s, f, rng):
    if len(f["organs"]) != 1:
        return None
    return "organ", "Which organ is abnormal?", f["organs"][0], ALL_ORGANS


def _t_count(s, f, rng):
    return "count", "How many lesions are there?", COUNT_WORDS[f["count"]], COUNT_WORDS


def _t_where(s, f, rng):
    if len(f["sides"]) != 1:
        return None
    return "where", "Where is the lesion?", f["sides"][0], ("left", "right")


def _t_half(s, f, rng):
    if len(f["halves"]) != 1:
        return None
    return "half", "Is the lesion in the upper or lower part of the organ?", f["halves"][0], ("upper", "lower")


# name -> (function, answer_type)
TEMPLATES = {
    "is_modality": (_t_is_modality, "closed"),
    "is_region": (_t_is_region, "closed"),
    "lesion_in": (_t_lesion_in, "closed"),
    "any_lesion": (_t_any, "closed"),
    "more_than_two": (_t_more_than_two, "closed"),
    "bright": (_t_bright, "closed"),
    "modality": (_t_modality, "open"),
    "region": (_t_region, "open"),
    "organ": (_t_organ, "open"),
    "count": (_t_count, "open"),
    "where": (_t_where, "open"),
    "half": (_t_half, "open"),
}
_TEMPLATE_NAMES = tuple(TEMPLATES)
# Order in which templates are tried for an image is a weighted random permutation; templates that
# are often not askable (need lesions) or that balance over many answers are tried earlier.
_TEMPLATE_WEIGHTS = np.array(
    [{"organ": 6.0, "half": 2.5, "where": 2.0, "bright": 1.2}.get(t, 1.0) for t in _TEMPLATE_NAMES]
)


def answer_set(group: str) -> tuple[str, ...]:
    """The answers a question group (template, or template:parameter) can have."""
    t = group.split(":", 1)[0]
    return {
        "modality": MODALITIES,
        "region": REGIONS,
        "organ": ALL_ORGANS,
        "count": COUNT_WORDS,
        "where": ("left", "right"),
        "half": ("upper", "lower"),
    }.get(t, YES_NO)


# ----------------------------------------------------------------------------------------------
# Captions
# ----------------------------------------------------------------------------------------------
VIEW = {"ct": "axial CT", "mri": "axial T2-weighted MRI", "x-ray": "frontal X-ray", "ultrasound": "ultrasound"}
POLARITY_WORD = {
    "ct": ("hyperdense", "hypodense"),
    "mri": ("hyperintense", "hypointense"),
    "x-ray": ("radiopaque", "radiolucent"),
    "ultrasound": ("hyperechoic", "hypoechoic"),
}
NORMAL_PHRASE = {"chest": "clear lungs", "abdomen": "normal liver, spleen and kidneys", "head": "a normal brain"}
NUM_WORDS = {2: "two", 3: "three"}


def make_caption(scene: dict[str, Any], rng: np.random.Generator) -> str:
    mod, region = scene["modality"], scene["region"]
    view = VIEW[mod]
    les = scene["lesions"]
    if not les:
        findings = ["no focal lesion", NORMAL_PHRASE[region], f"no focal lesion and {NORMAL_PHRASE[region]}"][
            int(rng.integers(3))
        ]
    else:
        pol = POLARITY_WORD[mod][0 if scene["polarity"] == "bright" else 1]
        by_organ: dict[str, list[dict]] = defaultdict(list)
        for l in les:
            by_organ[l["organ"]].append(l)
        parts = []
        for organ, ls in by_organ.items():
            where = f"the {ls[0]['half']} {organ}" if len({l["half"] for l in ls}) == 1 else f"the {organ}"
            if len(ls) == 1:
                parts.append(f"a {ls[0]['size']} {pol} lesion in {where}")
            else:
                parts.append(f"{NUM_WORDS[len(ls)]} {pol} lesions in {where}")
        findings = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    form = int(rng.integers(3))
    if form == 0:
        text = f"{view} of the {region} showing {findings}."
    elif form == 1:
        text = f"{view} of the {region}: {findings}."
    else:
        text = f"{findings} on {view} of the {region}."
    return text[0].upper() + text[1:]


# ----------------------------------------------------------------------------------------------
# Generation (cached per process)
# ----------------------------------------------------------------------------------------------
def _freeze(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False
    return a


@functools.lru_cache(maxsize=32)
def _vqa_split(seed: int, stream: int, n: int, size: int, per_image: int) -> tuple[Record, ...]:
    """``n`` questions, at most ``per_image`` per image, answers balanced per question group."""
    counts: dict[str, dict[str, int]] = {}
    out: list[Record] = []
    img_idx = 0
    max_images = 50 * n + 100  # safety net; never reached in practice
    while len(out) < n and img_idx < max_images:
        rng = _image_rng(seed, stream, img_idx)
        scene = sample_scene(rng)
        facts = scene_facts(scene)
        qrng = _image_rng(seed, stream + 1000, img_idx)
        chosen = []
        keys = qrng.random(len(_TEMPLATE_NAMES)) ** (1.0 / _TEMPLATE_WEIGHTS)  # Efraimidis-Spirakis
        for t_i in np.argsort(-keys):
            tname = _TEMPLATE_NAMES[int(t_i)]
            fn, atype = TEMPLATES[tname]
            got = fn(scene, facts, qrng)
            if got is None:
                continue
            group, question, answer, aset = got
            c = counts.setdefault(group, {a: 0 for a in aset})
            if c[answer] > min(c.values()):  # would unbalance this exact question: skip
                continue
            c[answer] += 1
            chosen.append((tname, group, question, answer, atype))
            if len(chosen) >= per_image or len(out) + len(chosen) >= n:
                break
        if chosen:
            image = _freeze(render_scene(scene, size, rng))
            for j, (tname, group, question, answer, atype) in enumerate(chosen):
                out.append(
                    Record(
                        uid=f"medsynth-s{stream}-i{img_idx:06d}-q{j}",
                        image=image,
                        text=question,
                        answer=answer,
                        answer_type=atype,
                        extra={
                            "image_id": img_idx,
                            "template": tname,
                            "group": group,
                            "modality": scene["modality"],
                            "region": scene["region"],
                            "count": len(scene["lesions"]),
                        },
                    )
                )
        img_idx += 1
    return tuple(out)


@functools.lru_cache(maxsize=16)
def _caption_split(seed: int, stream: int, n: int, size: int) -> tuple[Record, ...]:
    out = []
    for i in range(n):
        rng = _image_rng(seed, stream, i)
        scene = sample_scene(rng)
        caption = make_caption(scene, _image_rng(seed, stream + 1000, i))
        image = _freeze(render_scene(scene, size, rng))
        out.append(
            Record(
                uid=f"medsynth-cap-s{stream}-i{i:06d}",
                image=image,
                text=caption,
                extra={
                    "image_id": i,
                    "modality": scene["modality"],
                    "region": scene["region"],
                    "count": len(scene["lesions"]),
                },
            )
        )
    return tuple(out)


def _sha256_records(recs) -> str:
    h = hashlib.sha256()
    last_img = None
    for r in recs:
        h.update(f"{r.uid}\t{r.text}\t{r.answer}\t{r.answer_type}\n".encode())
        if r.image is not last_img:
            h.update(np.ascontiguousarray(r.image).tobytes())
            last_img = r.image
    return h.hexdigest()


class _MedSynthBase(DatasetPlugin):
    needs_root = False
    version = "1"
    _defaults: dict[str, Any] = {}

    def __init__(self, root=None, on_error: str = "raise", **options: Any):
        super().__init__(root, on_error, **options)
        unknown = sorted(set(options) - set(self._defaults))
        if unknown:
            raise ValueError(f"{self.name}: unknown option(s) {unknown}; allowed: {sorted(self._defaults)}")
        opts = {**self._defaults, **options}
        for k, v in opts.items():
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or int(v) < 0:
                raise ValueError(f"{self.name}: option {k}={v!r} must be a non-negative integer")
            opts[k] = int(v)
        if opts["image_size"] < 16:
            raise ValueError(f"{self.name}: image_size={opts['image_size']} is too small (>= 16)")
        self.opts = opts

    def _check_split(self, split: str) -> None:
        if split not in self.splits:
            raise KeyError(f"{self.name}: no split {split!r}; splits are {list(self.splits)}")

    def _image_probe_hash(self, stream: int) -> str:
        """Hash of the first two images of a stream, rendered afresh: catches generator drift."""
        h = hashlib.sha256()
        for i in range(2):
            rng = _image_rng(self.opts["seed"], stream, i)
            h.update(render_scene(sample_scene(rng), self.opts["image_size"], rng).tobytes())
        return h.hexdigest()

    def fingerprint(self) -> str:
        streams = [STREAMS[(self._kind, s)] for s in self.splits]
        payload = json.dumps(
            {
                "generator": GENERATOR_VERSION,
                "plugin": self.name,
                "version": self.version,
                "options": self.opts,
                "probe": [self._image_probe_hash(s) for s in streams],
            },
            sort_keys=True,
        )
        return hashlib.sha256(payload.encode()).hexdigest()

    def check(self, deep: bool = True) -> CheckReport:
        rep = CheckReport(dataset=self.name, root=None)
        S = self.opts["image_size"]
        for split in self.splits:
            recs = self.records(split)
            rep.counts[split] = len(recs)
            rep.checksums[split] = _sha256_records(recs)
            want = self._expected_count(split)
            if len(recs) != want:
                rep.problems.append(
                    f"{self.name}/{split}: {len(recs)} records, expected {want}; "
                    "fix: report a generator bug (GENERATOR_VERSION)"
                )
            for r in recs:
                if not (isinstance(r.image, np.ndarray) and r.image.shape == (S, S, 3) and r.image.dtype == np.uint8):
                    rep.problems.append(
                        f"{self.name}/{split}: record {r.uid}: image is not uint8 {S}x{S}x3; "
                        "fix: report a generator bug"
                    )
                    break
            self._check_extra(split, recs, rep)
        return rep

    def _check_extra(self, split, recs, rep) -> None:
        pass


class MedSynthVQA(_MedSynthBase):
    """Synthetic medical VQA (see module docstring). Options: n_train, n_val, n_test, image_size, seed,
    questions_per_image."""

    name = "medsynth"
    task = "vqa"
    splits = ("train", "val", "test")
    default_pretrain_corpus = "medsynth-captions"
    _kind = "vqa"
    _defaults = {"n_train": 3000, "n_val": 600, "n_test": 600, "image_size": 64, "seed": 0, "questions_per_image": 4}
    # checked when a run is planned ("did you mean"); the constructor checks the values
    option_schema = {k: Option(int, v, "a non-negative whole number") for k, v in _defaults.items()}

    def _expected_count(self, split: str) -> int:
        return self.opts[f"n_{split}"]

    def records(self, split: str) -> list[Record]:
        self._check_split(split)
        o = self.opts
        if o["questions_per_image"] < 1:
            raise ValueError(f"{self.name}: questions_per_image must be >= 1")
        return list(
            _vqa_split(o["seed"], STREAMS[("vqa", split)], o[f"n_{split}"], o["image_size"], o["questions_per_image"])
        )

    def label_names(self) -> list[str]:
        seen: dict[str, None] = {}
        for split in self.splits:
            for r in self.records(split):
                seen.setdefault(r.answer, None)
        return list(seen)

    def _check_extra(self, split, recs, rep) -> None:
        counts: dict[str, dict[str, int]] = {}
        for r in recs:
            c = counts.setdefault(r.extra["group"], {a: 0 for a in answer_set(r.extra["group"])})
            c[r.answer] += 1
        bad = [g for g, c in counts.items() if max(c.values()) - min(c.values()) > 1]
        if bad:
            rep.problems.append(f"{self.name}/{split}: answers unbalanced for {bad}; fix: report a generator bug")


class MedSynthCaptions(_MedSynthBase):
    """Image-caption pairs for pre-training, from seed streams disjoint from every MedSynthVQA split.
    Options: n (train images), n_val, image_size, seed."""

    name = "medsynth-captions"
    task = "pretrain"
    splits = ("train", "val")
    _kind = "captions"
    _defaults = {"n": 2000, "n_val": 200, "image_size": 64, "seed": 0}
    option_schema = {k: Option(int, v, "a non-negative whole number") for k, v in _defaults.items()}

    def _expected_count(self, split: str) -> int:
        return self.opts["n"] if split == "train" else self.opts["n_val"]

    def records(self, split: str) -> list[Record]:
        self._check_split(split)
        return list(
            _caption_split(
                self.opts["seed"], STREAMS[("captions", split)], self._expected_count(split), self.opts["image_size"]
            )
        )
