"""brainsynth: procedural multi-parametric brain MRI phantoms with BraTS-style tumour labels.

Nothing is downloaded; every study is a pure function of ``(seed, stream, index, options,
GENERATOR_VERSION)``. The design follows the project's phantom design:

* **Shared anatomy on a fixed canvas.** A brain ellipsoid (random scale +-10 %, small rotation,
  small shift) roughly centred in a ``canvas``-cubed volume: white matter inside, a cortical grey
  ribbon of noise-modulated thickness, CSF in two ventricles and in noise-thresholded sulci, and a
  few small bright "vessel" blobs. Tissue maps are soft (partial volume).
* **One tumour per study, nested as in BraTS.** Edema (2) contains the tumour core; high grade
  (HGG): the core is an enhancing rim (4) around a necrotic centre (1); low grade (LGG): the core is
  non-enhancing (1) and there is no enhancing region, so ET is empty (the empty-GT Dice rule
  matters). Shapes are spheres with a smooth radial noise shared by the three levels, so nesting
  always holds. ``Record.label`` is the grade (0 = LGG, 1 = HGG).
* **Correlated modalities** t1, t1c, t2, flair from one intensity table applied to the same tissue
  fractions, chosen so that no single modality gives every region: enhancement is bright on t1c
  but so are the vessels, which are also bright on t1 (ET needs t1 and t1c); necrosis and CSF are
  both dark on t1 and bright on t2, but only CSF is dark on flair (TC needs flair or t2 with t1c);
  edema is brightest on flair and t2. Each modality then gets a smooth bias field, Rician-like
  noise and a random gain and offset (percentile scaling must undo them).
* **Missing modalities.** With probability ``missing_rate`` a study lacks one modality (uniform
  among the four); its key is absent from ``Record.image``.

Splits use disjoint seed streams; the pre-training corpus (:class:`BrainSynthCorpus`) has its
own streams, so pre-training never sees a downstream test study.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

import numpy as np

from umdbench.api import CheckReport, DatasetPlugin, Record

__all__ = [
    "GENERATOR_VERSION",
    "MODALITIES",
    "LABEL_CODES",
    "BrainSynth",
    "BrainSynthGrade",
    "BrainSynthCorpus",
    "make_study",
]

GENERATOR_VERSION = "brainsynth-1"
MODALITIES = ("t1", "t1c", "t2", "flair")
LABEL_CODES = {"necrotic/non-enhancing core": 1, "edema": 2, "enhancing": 4}  # BraTS 2018-2021 codes
GRADES = ("LGG", "HGG")
STREAMS = {"train": 1, "val": 2, "test": 3, "corpus-train": 11, "corpus-val": 12}

# tissue -> intensity per modality (t1, t1c, t2, flair), before bias, noise and gain
TISSUES = ("csf", "gm", "wm", "vessel", "edema", "necrosis", "enhancing", "nonenhancing")
INTENSITY = np.array(
    [
        # t1    t1c   t2    flair
        [0.15, 0.15, 0.95, 0.08],  # csf: dark t1, bright t2, suppressed on flair
        [0.45, 0.47, 0.55, 0.55],  # grey matter
        [0.65, 0.66, 0.40, 0.45],  # white matter
        [0.85, 0.95, 0.20, 0.20],  # vessels: bright on t1 AND t1c (the enhancement distractor)
        [0.38, 0.38, 0.80, 0.92],  # edema: bright flair/t2
        [0.14, 0.14, 0.90, 0.42],  # necrosis: like csf on t1/t2, but not suppressed on flair
        [0.45, 0.97, 0.55, 0.62],  # enhancing rim: bright on t1c only
        [0.30, 0.32, 0.72, 0.76],  # non-enhancing core (LGG)
    ],
    dtype=np.float32,
)


def _rng(seed: int, stream: int, index: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), int(stream), int(index)])))


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Zero-mean, unit-range smooth noise: a ``cells``-cubed random grid upsampled trilinearly."""
    import torch
    import torch.nn.functional as F

    grid = torch.from_numpy(rng.uniform(-1.0, 1.0, (1, 1, cells, cells, cells)).astype(np.float32))
    up = F.interpolate(grid, size=(size, size, size), mode="trilinear", align_corners=True)
    return up[0, 0].numpy()


def _soft(x: np.ndarray, width: float) -> np.ndarray:
    """Partial-volume edge: 1 where ``x`` >> 0, 0 where ``x`` << 0, a ramp of ``width`` between."""
    return (1.0 / (1.0 + np.exp(-np.clip(x / width, -30, 30)))).astype(np.float32)


def make_study(seed: int, stream: int, index: int, canvas: int = 48, missing_rate: float = 0.2) -> dict[str, Any]:
    """One phantom study: ``{"image": {modality: float16 [S,S,S]}, "label": uint8 [S,S,S], "grade": int}``."""
    rng = _rng(seed, stream, index)
    S = int(canvas)
    ax = np.linspace(-1.0, 1.0, S, dtype=np.float32)
    z, y, x = np.meshgrid(ax, ax, ax, indexing="ij")
    # brain pose: scale, rotation about the z axis, small shift
    scale = rng.uniform(0.9, 1.1)
    theta = rng.uniform(-0.17, 0.17)
    shift = rng.uniform(-0.04, 0.04, 3).astype(np.float32)
    zc, yc, xc = z - shift[0], y - shift[1], x - shift[2]
    xr = math.cos(theta) * xc - math.sin(theta) * yc
    yr = math.sin(theta) * xc + math.cos(theta) * yc
    radii = np.array([0.72, 0.85, 0.75], dtype=np.float32) * scale
    q = np.sqrt((zc / radii[0]) ** 2 + (yr / radii[1]) ** 2 + (xr / radii[2]) ** 2)
    edge = 1.5 / S  # about one voxel of partial volume
    brain = _soft(1.0 - q, edge)
    ribbon = 0.16 * (1.0 + 0.5 * _smooth_noise(rng, S, 5))
    wm_core = _soft((1.0 - ribbon) - q, edge)
    # ventricles: a mirrored pair of ellipsoids near the centre
    vr = np.array([0.20, 0.26, 0.07], dtype=np.float32) * rng.uniform(0.8, 1.2)
    vx = 0.11 * scale
    vent = np.zeros_like(q)
    for side in (-1.0, 1.0):
        qv = np.sqrt(((zc - 0.05) / vr[0]) ** 2 + ((yr + 0.05) / vr[1]) ** 2 + ((xr - side * vx) / vr[2]) ** 2)
        vent = np.maximum(vent, _soft(1.0 - qv, 2 * edge))
    sulci = _soft(_smooth_noise(rng, S, 9) - 0.45, 0.05) * _soft(q - (1.0 - ribbon), edge)
    csf = np.maximum(vent, sulci) * brain
    # vessels: small bright blobs anywhere in the brain
    vessel = np.zeros_like(q)
    for _ in range(int(rng.integers(5, 10))):
        c = rng.uniform(-0.55, 0.55, 3) * radii
        r = rng.uniform(0.035, 0.06)
        d = np.sqrt((zc - c[0]) ** 2 + (yr - c[1]) ** 2 + (xr - c[2]) ** 2)
        vessel = np.maximum(vessel, _soft(r - d, edge))
    vessel *= brain

    # tumour: three nested levels sharing one radial noise, so necrosis < core < edema always holds
    grade = int(rng.integers(2))
    centre = rng.uniform(-0.35, 0.35, 3).astype(np.float32) * radii
    r_edema = rng.uniform(0.26, 0.38)
    r_core = r_edema * rng.uniform(0.5, 0.68)
    r_necro = r_core * rng.uniform(0.4, 0.6)
    wobble = 1.0 + 0.3 * _smooth_noise(rng, S, 6)
    dist = np.sqrt((zc - centre[0]) ** 2 + (yr - centre[1]) ** 2 + (xr - centre[2]) ** 2) * wobble
    inside = brain > 0.5
    edema_m = (dist < r_edema) & inside
    core_m = (dist < r_core) & inside
    necro_m = (dist < r_necro) & inside & bool(grade)
    label = np.zeros((S, S, S), dtype=np.uint8)
    label[edema_m] = LABEL_CODES["edema"]
    if grade:  # HGG: enhancing rim around necrosis
        label[core_m] = LABEL_CODES["enhancing"]
        label[necro_m] = LABEL_CODES["necrotic/non-enhancing core"]
    else:  # LGG: non-enhancing core, no enhancing tumour
        label[core_m] = LABEL_CODES["necrotic/non-enhancing core"]
    # soft lesion fractions for the intensities (hard labels stay the ground truth)
    f_edema = _soft(r_edema - dist, edge) * brain
    f_core = _soft(r_core - dist, edge) * brain
    f_necro = _soft(r_necro - dist, edge) * brain * grade

    # tissue fractions, lesion on top of anatomy, in the order of TISSUES
    normal = 1.0 - f_edema
    wm = brain * wm_core * (1 - csf) * (1 - vessel)
    gm = brain * (1 - wm_core) * (1 - csf) * (1 - vessel)
    fr = np.stack(
        [
            csf * normal,
            gm * normal,
            wm * normal,
            vessel * normal,
            (f_edema - f_core),
            (f_necro if grade else 0 * f_core),
            (f_core - f_necro) if grade else 0 * f_core,
            0 * f_core if grade else f_core,
        ]
    ).astype(np.float32)
    clean = np.tensordot(INTENSITY.T, fr, axes=1)  # [4,S,S,S]

    present = list(MODALITIES)
    if rng.uniform() < missing_rate:
        present.pop(int(rng.integers(len(MODALITIES))))
    image = {}
    for m, mod in enumerate(MODALITIES):
        bias = np.exp(0.15 * _smooth_noise(rng, S, 3))
        sigma = 0.03
        n1 = rng.normal(0.0, sigma, (S, S, S)).astype(np.float32)
        n2 = rng.normal(0.0, sigma, (S, S, S)).astype(np.float32)
        signal = np.sqrt((clean[m] * bias + n1) ** 2 + n2**2)  # magnitude image: Rician-like noise
        vol = rng.uniform(0.6, 1.4) * signal + rng.uniform(0.0, 0.1)
        if mod in present:  # draw the noise either way so a missing modality leaves the others unchanged
            image[mod] = vol.astype(np.float16)  # half the memory; the scaling step works in float32
    return {"image": image, "label": label, "grade": grade}


DROP_STREAM = 99  # the seed stream of test-time modality drops (independent of the studies' own draws)


def drop_modalities(study: dict, n: int, rng: np.random.Generator) -> dict:
    """The study without ``n`` of its modalities (uniform without replacement; one always stays)."""
    present = sorted(study["image"])
    n = min(int(n), len(present) - 1)
    gone = set(rng.choice(present, size=n, replace=False).tolist()) if n > 0 else set()
    return {**study, "image": {m: v for m, v in study["image"].items() if m not in gone}}


class _BrainSynthBase(DatasetPlugin):
    """Options: n_train, n_val, n_test (studies per split), canvas (edge in voxels, >= 16),
    missing_rate (probability that a study lacks one modality), test_drop (modalities removed from
    every test study, chosen per study with a fixed seed; at least one stays), seed."""

    version = "1"
    needs_root = False
    encoder = "resunet3d"  # tiny: the cheap residual CNN the tests and the first tiny boards use
    # small and paper: BrainMVP's released backbone (UniFormer-S layout; small at reduced widths)
    preset_encoders = {"small": "uniformer3d", "paper": "uniformer3d"}
    test_only_options = ("test_drop",)  # training stages are shared across test-time drops
    _defaults: dict[str, Any] = {
        "n_train": 48,
        "n_val": 8,
        "n_test": 24,
        "canvas": 48,
        "missing_rate": 0.2,
        "test_drop": 0,
        "seed": 0,
    }
    _streams = {"train": STREAMS["train"], "val": STREAMS["val"], "test": STREAMS["test"]}

    def __init__(self, root=None, on_error: str = "raise", **options: Any):
        super().__init__(root, on_error, **options)
        unknown = sorted(set(options) - set(self._defaults))
        if unknown:
            raise ValueError(f"{self.name}: unknown option(s) {unknown}; allowed: {sorted(self._defaults)}")
        opts = {**self._defaults, **options}
        for key in opts:
            if key == "missing_rate":
                opts[key] = float(opts[key])
                if not 0.0 <= opts[key] <= 1.0:
                    raise ValueError(f"{self.name}: missing_rate={opts[key]} must be within [0, 1]")
            else:
                if isinstance(opts[key], bool) or int(opts[key]) != opts[key] or int(opts[key]) < 0:
                    raise ValueError(f"{self.name}: option {key}={opts[key]!r} must be a non-negative integer")
                opts[key] = int(opts[key])
        if opts["canvas"] < 16:
            raise ValueError(f"{self.name}: canvas={opts['canvas']} is too small; use >= 16 voxels")
        self.opts = opts
        self._cache: dict[str, list[Record]] = {}

    def _count(self, split: str) -> int:
        return self.opts[f"n_{split}"]

    def _check_split(self, split: str) -> None:
        if split not in self.splits:
            raise KeyError(f"{self.name}: no split {split!r}; splits are {list(self.splits)}")

    def records(self, split: str) -> list[Record]:
        self._check_split(split)
        if split not in self._cache:
            o = self.opts
            out = []
            for i in range(self._count(split)):
                study = make_study(o["seed"], self._streams[split], i, o["canvas"], o["missing_rate"])
                if split == "test" and o.get("test_drop"):
                    study = drop_modalities(study, o["test_drop"], _rng(o["seed"], DROP_STREAM, i))
                out.append(self._record(f"{self.name}-{split}-{i:04d}", study))
            self._cache[split] = out
        return self._cache[split]

    def _record(self, uid: str, study: dict) -> Record:
        return Record(
            uid=uid,
            image=study["image"],
            text="",
            label=study["grade"],
            extra={"label": study["label"], "grade": GRADES[study["grade"]]},
        )

    def fingerprint(self) -> str:
        """Generator version, options and a hash of one freshly generated study (catches drift)."""
        o = self.opts
        probe = make_study(o["seed"], self._streams[self.splits[0]], 0, o["canvas"], o["missing_rate"])
        h = hashlib.sha256(probe["label"].tobytes())
        for mod in sorted(probe["image"]):
            h.update(mod.encode() + probe["image"][mod].tobytes())
        payload = json.dumps(
            {
                "generator": GENERATOR_VERSION,
                "plugin": self.name,
                "version": self.version,
                "options": o,
                "probe": h.hexdigest(),
            },
            sort_keys=True,
        )
        return hashlib.sha256(payload.encode()).hexdigest()

    def check(self, deep: bool = False) -> CheckReport:
        rep = CheckReport(dataset=self.name, root=None)
        S = self.opts["canvas"]
        for split in self.splits:
            recs = self.records(split)
            rep.counts[split] = len(recs)
            for r in recs:
                shapes = {m: v.shape for m, v in r.image.items()}
                if not r.image or any(s != (S, S, S) for s in shapes.values()):
                    rep.problems.append(
                        f"{self.name}/{split}: record {r.uid}: volumes {shapes} are not {S}^3; "
                        f"fix: report a generator bug ({GENERATOR_VERSION})"
                    )
                    break
        return rep


class BrainSynth(_BrainSynthBase):
    """Tumour segmentation (regions WT, TC, ET) on phantom studies; see the module docstring."""

    name = "brainsynth"
    task = "segmentation"
    default_pretrain_corpus = "brainsynth-corpus"

    def label_names(self) -> list[str]:
        return ["WT", "TC", "ET"]  # the output regions, BraTS order


class BrainSynthGrade(_BrainSynthBase):
    """The same studies as ``brainsynth``, labelled by grade only (scan-level classification)."""

    name = "brainsynth-grade"
    task = "scan-classification"
    default_pretrain_corpus = "brainsynth-corpus"

    def label_names(self) -> list[str]:
        return list(GRADES)


class BrainSynthCorpus(_BrainSynthBase):
    """Unlabelled phantom studies for pre-training, from seed streams no downstream split uses.
    Options: n_train, n_val, canvas, missing_rate, seed."""

    name = "brainsynth-corpus"
    task = "volumes"
    splits = ("train", "val")
    _defaults = {"n_train": 64, "n_val": 8, "canvas": 48, "missing_rate": 0.2, "seed": 0}
    _streams = {"train": STREAMS["corpus-train"], "val": STREAMS["corpus-val"]}

    def _record(self, uid: str, study: dict) -> Record:
        return Record(uid=uid, image=study["image"], text="")
