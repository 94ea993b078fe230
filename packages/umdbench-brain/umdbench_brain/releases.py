"""Readers of BrainMVP's downstream datasets in their public release layouts (besides BraTS,
:mod:`umdbench_brain.brats`): segmentation on ISLES22, MRBrainS13 and UPENN-GBM, scan
classification on BraTS 2018 (HGG vs LGG) and ABIDE I (autism vs control).

Each reader is a :class:`_BraTS` underneath: the same ``splits.json`` or 70/10/20 case-name hash
split, the same per-study checks (:mod:`umdbench_brain.volcheck`: headers, one grid, one decode
per file version through the content cache), the same ``on_error`` rule and the released
pre-processing (RAS, 1 mm, foreground crop; ``preprocess=none`` keeps the stored grid). What
differs is declared per class:

* the layout: :meth:`_Release.cases` (one path per study, its ``name`` the study id) and
  :meth:`_Release.files` (``{modality or 'seg': path}``);
* ``modalities``: the names records use, matched by name with the encoder's ``model.modalities``
  (a modality the encoder has and a study lacks is absent: zeros, or its template with
  ``seg-tmpl``/``cls-tmpl``, as BrainMVP fills missing modalities);
* ``task``: ``segmentation`` (``region_codes``: each region the union of label codes, after
  ``label_remap``; ``label_values``: the codes the release writes) or ``scan-classification``
  (``classes``; :meth:`_Release.class_of`).

The fingerprint hashes the content of every file a study reads (wherever it lies under the
dataset folder), other files of a study folder by name and size, ``splits.json`` and the
release's tables (ABIDE's phenotype file).
"""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path
from typing import Any, ClassVar

from umdbench.api import CheckReport, DataError, Record
from umdbench.data.content import content_cache
from umdbench_brain.brats import SPLIT_FILE, _BraTS

__all__ = ["ISLES22", "MRBrainS13", "UPennGBM", "BraTS2018Grade", "ABIDE", "MODALITY_NAMES"]

# every modality name a reader of this package writes (model.modalities picks among them)
MODALITY_NAMES = {
    "t1": "T1-weighted",
    "t1c": "T1-weighted with contrast (T1ce, T1GD)",
    "t2": "T2-weighted",
    "flair": "T2 FLAIR",
    "dwi": "diffusion-weighted (b=1000)",
    "adc": "apparent diffusion coefficient map",
    "t1ir": "T1-weighted inversion recovery",
}
BRATS_REGIONS = {"WT": (1, 2, 4), "TC": (1, 4), "ET": (4,)}


class _Release(_BraTS):
    """A release read by its layout hooks; see the module docstring."""

    classes: ClassVar[tuple[str, ...]] = ()
    # the public page / challenge the layout is that of (messages and docs)
    source: ClassVar[str] = ""
    _extra_defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, root=None, on_error: str = "raise", **options: Any):
        self._defaults = {**_BraTS._defaults, **self._extra_defaults}
        super().__init__(root, on_error, **options)

    # -- layout hooks -------------------------------------------------------------------------------
    def _require_root(self) -> Path:
        if self.root is None:
            raise DataError(f"{self.name} reads files: pass --data-root DIR (the folder holding {self.root_subdir}/).")
        if not self.root.is_dir():
            raise DataError(
                f"{self.name}: folder {self.root} does not exist; point --data-root at the folder holding "
                f"{self.root_subdir}/ (the {self.source} release, e.g. {self.example()})."
            )
        return self.root

    def study_folders(self) -> list[Path]:
        """Where the studies are: one folder per study (the default: the dataset folder's folders)."""
        return sorted(p for p in self._require_root().iterdir() if p.is_dir())

    def cases(self) -> list[Path]:
        if self._cases is None:
            cases = self.study_folders()
            seen: dict[str, Path] = {}
            for case in cases:
                if case.name in seen:
                    raise DataError(
                        f"{self.name}: study {case.name} occurs twice ({seen[case.name]} and {case}); a "
                        f"study id must be unique in the release; fix: remove one copy."
                    )
                seen[case.name] = case
            self._cases = cases
        return self._cases

    def files(self, case: Path) -> dict[str, Path]:
        raise NotImplementedError

    def class_of(self, case: Path) -> int:
        raise NotImplementedError

    def extra_files(self) -> list[Path]:
        """Release tables a record depends on (hashed into the fingerprint)."""
        return []

    # -- records ------------------------------------------------------------------------------------
    def _record(self, case: Path) -> Record:
        files = self.files(case)
        seg = files.pop("seg", None)
        extra: dict[str, Any] = {"study": case.name, "preprocess": self.opts["preprocess"]}
        label = None
        if self.task == "segmentation":
            extra.update(
                label=str(seg),
                label_map=dict(self.label_remap),
                region_codes={k: list(v) for k, v in self.region_codes.items()},
            )
        else:
            label = int(self.class_of(case))
            extra["class"] = self.classes[label]
        return Record(uid=case.name, image={m: str(p) for m, p in files.items()}, text="", label=label, extra=extra)

    def label_names(self) -> list[str]:
        return list(self.region_codes) if self.task == "segmentation" else list(self.classes)

    def _relative(self, path: Path) -> str:
        try:
            return str(path.relative_to(self.root))
        except ValueError:
            return str(path)

    def fingerprint(self) -> str:
        """sha256 over the plugin, its options, ``splits.json``, the release's tables and the content
        of every file a study reads (each hashed once per file version); other files under a study
        folder by name and size. Names enter relative to the dataset folder, so a moved copy keeps
        it."""
        if self._fingerprint is not None:
            return self._fingerprint
        cache = content_cache(self.root if self.root is not None else ".")
        h = hashlib.sha256(f"{self.name}:{self.version}:{sorted(self.opts.items())}".encode())

        def content(p: Path) -> str:
            try:
                return cache.sha256(p)
            except OSError:  # missing or a dangling link: records() and data check name it
                return "unreadable"

        for case in self.cases():
            needed = sorted(self.files(case).values(), key=str)
            for p in needed:
                h.update(f"{self._relative(p)}:{content(p)}\n".encode())
            if case.is_dir():
                wanted = {str(p) for p in needed}
                for p in sorted(case.rglob("*")):
                    if str(p) in wanted or p.is_dir():
                        continue
                    try:
                        size = p.lstat().st_size
                    except OSError:
                        size = -1
                    h.update(f"{self._relative(p)}:size {size}\n".encode())
        for p in self.extra_files():
            h.update(f"\0table {self._relative(p)}:{content(p)}\n".encode())
        split_file = self.root / SPLIT_FILE
        if split_file.is_file():
            h.update(b"\0splits\0" + split_file.read_bytes())
        cache.save()
        self._fingerprint = h.hexdigest()
        return self._fingerprint

    def check(self, deep: bool = False) -> CheckReport:
        rep = super().check(deep=deep)
        for p in self.extra_files():
            try:
                rep.checksums[self._relative(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
            except OSError:
                pass
        return rep


def _nifti(folder: Path, stem: str) -> Path:
    """``folder/stem.nii.gz``, or ``stem.nii`` where only that exists (releases ship either)."""
    gz = folder / f"{stem}.nii.gz"
    plain = folder / f"{stem}.nii"
    return plain if (not gz.exists() and plain.exists()) else gz


# ----------------------------------------------------------------------------------------------------
# segmentation
# ----------------------------------------------------------------------------------------------------
class ISLES22(_Release):
    """ISLES'22 (ischemic stroke lesion segmentation, MICCAI 2022; Zenodo record 7960856), BIDS:
    ``ISLES-2022/[rawdata/]sub-strokecaseNNNN/ses-0001/dwi/sub-strokecaseNNNN_ses-0001_{dwi,adc}.nii.gz``,
    ``.../ses-0001/anat/sub-strokecaseNNNN_ses-0001_FLAIR.nii.gz`` and the expert mask
    ``ISLES-2022/derivatives/sub-strokecaseNNNN/ses-0001/sub-strokecaseNNNN_ses-0001_msk.nii.gz``
    (0/1, on the DWI grid). The release's FLAIR is on its own grid, not the DWI's, so it is read
    only with option ``flair=true`` (a copy whose FLAIR was resampled onto the DWI grid; otherwise
    the one-grid check refuses the study)."""

    name = "isles22"
    root_subdir = "ISLES-2022"
    default_pretrain_corpus = "isles22"
    source = "ISLES'22 (isles22.grand-challenge.org, zenodo.org/records/7960856)"
    modalities = ("dwi", "adc", "flair")
    label_values = (0, 1)
    label_remap: ClassVar[dict[int, int]] = {}
    region_codes = {"infarct": (1,)}
    study_pattern = r"sub-strokecase\d{4}"
    study_example = "sub-strokecase0001"
    _extra_defaults = {"flair": False}

    def __init__(self, root=None, on_error: str = "raise", **options: Any):
        super().__init__(root, on_error, **options)
        if not isinstance(self.opts["flair"], bool):
            raise ValueError(
                f"{self.name}: option flair={self.opts['flair']!r} must be true or false (false: DWI and "
                f"ADC only, as released the FLAIR is on another grid)"
            )

    def _raw(self) -> Path:
        root = self._require_root()
        return root / "rawdata" if (root / "rawdata").is_dir() else root

    def study_folders(self) -> list[Path]:
        return sorted(p for p in self._raw().iterdir() if p.is_dir() and p.name.startswith("sub-"))

    def files(self, case: Path) -> dict[str, Path]:
        ses = case / "ses-0001"
        stem = f"{case.name}_ses-0001"

        def at(sub: str, suffix: str) -> Path:
            nested = ses / sub / f"{stem}_{suffix}.nii.gz"
            flat = ses / f"{stem}_{suffix}.nii.gz"  # some copies drop the BIDS datatype folders
            return flat if (not nested.exists() and flat.exists()) else nested

        out = {"dwi": at("dwi", "dwi"), "adc": at("dwi", "adc")}
        if self.opts["flair"]:
            out["flair"] = at("anat", "FLAIR")
        out["seg"] = self.root / "derivatives" / case.name / "ses-0001" / f"{stem}_msk.nii.gz"
        return out

    def example(self) -> str:
        return f"{self.root}/sub-strokecase0001/ses-0001/dwi/sub-strokecase0001_ses-0001_dwi.nii.gz"

    def deviations(self) -> list[str]:
        found = super().deviations()
        if not self.opts["flair"]:
            found.append(
                "ISLES22 read with DWI and ADC only (flair=false): the release's FLAIR is not on the DWI grid "
                "the mask is drawn on"
            )
        return found


class MRBrainS13(_Release):
    """MRBrainS13 (MICCAI 2013 grand challenge on MR brain image segmentation, mrbrains13.isi.uu.nl),
    the NIfTI training data: ``TrainingData/<n>/{T1,T1_IR,T2_FLAIR,LabelsForTraining}.nii`` (n = 1..5;
    ``T1_1mm.nii`` and ``LabelsForTesting.nii`` are not read). Labels 0-8 (1 cortical grey matter,
    2 basal ganglia, 3 white matter, 4 white-matter lesions, 5 extracerebral CSF, 6 ventricles,
    7 cerebellum, 8 brainstem); evaluated as the challenge does on GM = 1+2, WM = 3+4, CSF = 5+6
    (cerebellum and brainstem count as background, as in ``LabelsForTesting``)."""

    name = "mrbrains13"
    root_subdir = "mrbrains13"
    default_pretrain_corpus = "mrbrains13"
    source = "MRBrainS13 (mrbrains13.isi.uu.nl)"
    modalities = ("t1", "t1ir", "flair")
    label_values = tuple(range(9))
    label_remap: ClassVar[dict[int, int]] = {}
    region_codes = {"GM": (1, 2), "WM": (3, 4), "CSF": (5, 6)}

    def study_folders(self) -> list[Path]:
        training = self._require_root() / "TrainingData"
        if not training.is_dir():
            raise DataError(
                f"{self.name}: {training} does not exist; the release's training studies live in "
                f"TrainingData/<n>/ (e.g. {self.example()}); point --data-root at the folder holding "
                f"{self.root_subdir}/."
            )
        return sorted(p for p in training.iterdir() if p.is_dir())

    def files(self, case: Path) -> dict[str, Path]:
        return {
            "t1": _nifti(case, "T1"),
            "t1ir": _nifti(case, "T1_IR"),
            "flair": _nifti(case, "T2_FLAIR"),
            "seg": _nifti(case, "LabelsForTraining"),
        }

    def example(self) -> str:
        return f"{self.root}/TrainingData/1/T1.nii"


class UPennGBM(_Release):
    """UPENN-GBM (TCIA, doi 10.7937/TCIA.709X-DN49), the NIfTI release:
    ``[NIfTI-files/]images_structural/UPENN-GBM-NNNNN_11/UPENN-GBM-NNNNN_11_{T1,T1GD,T2,FLAIR}.nii.gz``
    (skull-stripped, co-registered to SRI24) and the labels ``images_segm/UPENN-GBM-NNNNN_11_segm.nii.gz``
    (manually revised, a subset of the subjects; option ``labels=automated`` reads
    ``automated_segm/UPENN-GBM-NNNNN_11_automated_approx_segm.nii.gz`` instead). A study is a subject
    with a label file; labels 0/1/2/4 (BraTS codes)."""

    name = "upenn-gbm"
    root_subdir = "UPENN-GBM"
    default_pretrain_corpus = "upenn-gbm"
    source = "UPENN-GBM (The Cancer Imaging Archive)"
    modalities = ("t1", "t1c", "t2", "flair")
    label_values = (0, 1, 2, 4)
    label_remap: ClassVar[dict[int, int]] = {}
    region_codes = BRATS_REGIONS
    study_pattern = r"UPENN-GBM-\d{5}_\d{2}"
    study_example = "UPENN-GBM-00001_11"
    _extra_defaults = {"labels": "manual"}
    _LABELS = {
        "manual": ("images_segm", "_segm.nii.gz"),
        "automated": ("automated_segm", "_automated_approx_segm.nii.gz"),
    }

    def __init__(self, root=None, on_error: str = "raise", **options: Any):
        super().__init__(root, on_error, **options)
        if self.opts["labels"] not in self._LABELS:
            raise ValueError(
                f"{self.name}: option labels={self.opts['labels']!r}; allowed: manual (images_segm, the "
                f"revised labels), automated (automated_segm)"
            )

    def _base(self) -> Path:
        root = self._require_root()
        return root / "NIfTI-files" if (root / "NIfTI-files").is_dir() else root

    def _label_dir(self) -> tuple[Path, str]:
        folder, suffix = self._LABELS[self.opts["labels"]]
        return self._base() / folder, suffix

    def study_folders(self) -> list[Path]:
        labels, suffix = self._label_dir()
        if not labels.is_dir():
            raise DataError(
                f"{self.name}: label folder {labels} does not exist; the release keeps one label file per "
                f"labelled subject there (e.g. UPENN-GBM-00001_11{suffix}); fix: copy it from the TCIA "
                f"release, or choose the other labels with dataset.options.labels=manual|automated."
            )
        structural = self._base() / "images_structural"
        return sorted(structural / p.name[: -len(suffix)] for p in labels.iterdir() if p.name.endswith(suffix))

    def files(self, case: Path) -> dict[str, Path]:
        labels, suffix = self._label_dir()
        n = case.name
        return {
            "t1": case / f"{n}_T1.nii.gz",
            "t1c": case / f"{n}_T1GD.nii.gz",
            "t2": case / f"{n}_T2.nii.gz",
            "flair": case / f"{n}_FLAIR.nii.gz",
            "seg": labels / f"{n}{suffix}",
        }

    def example(self) -> str:
        return f"{self.root}/NIfTI-files/images_structural/UPENN-GBM-00001_11/UPENN-GBM-00001_11_T1.nii.gz"

    def check(self, deep: bool = False) -> CheckReport:
        rep = super().check(deep=deep)
        if not rep.problems and not any(rep.counts.values()):
            labels, suffix = self._label_dir()
            rep.problems.append(f"{self.name}: {labels} holds no *{suffix} label file; fix: copy the release's labels.")
        return rep


# ----------------------------------------------------------------------------------------------------
# scan classification
# ----------------------------------------------------------------------------------------------------
class BraTS2018Grade(_Release):
    """BraTS 2018 training data labelled by glioma grade (BrainMVP's HGG/LGG classification):
    ``MICCAI_BraTS_2018_Data_Training/{HGG,LGG}/<case>/<case>_{t1,t1ce,t2,flair}.nii.gz`` (the
    ``_seg`` file is not read); class = the grade folder (LGG = 0, HGG = 1, as ``brainsynth-grade``)."""

    name = "brats2018-grade"
    task = "scan-classification"
    root_subdir = "MICCAI_BraTS_2018_Data_Training"
    default_pretrain_corpus = "brats2018-grade"
    source = "BraTS 2018 (MICCAI 2018 BraTS challenge, CBICA image processing portal)"
    modalities = ("t1", "t1c", "t2", "flair")
    classes = ("LGG", "HGG")
    label_values = ()
    region_codes: ClassVar[dict] = {}
    suffixes = {"t1": "t1", "t1ce": "t1c", "t2": "t2", "flair": "flair"}

    def study_folders(self) -> list[Path]:
        root = self._require_root()
        grades = [root / g for g in self.classes if (root / g).is_dir()]
        if not grades:
            raise DataError(
                f"{self.name}: {root} has neither HGG/ nor LGG/; the release keeps one folder per grade, "
                f"each with one folder per study (e.g. {self.example()})."
            )
        return sorted((p for g in grades for p in g.iterdir() if p.is_dir()), key=lambda p: p.name)

    def files(self, case: Path) -> dict[str, Path]:
        return {mod: case / f"{case.name}_{suffix}.nii.gz" for suffix, mod in self.suffixes.items()}

    def class_of(self, case: Path) -> int:
        return self.classes.index(case.parent.name)

    def example(self) -> str:
        return f"{self.root}/HGG/Brats18_2013_2_1/Brats18_2013_2_1_t1.nii.gz"


class ABIDE(_Release):
    """ABIDE I (Autism Brain Imaging Data Exchange, fcon_1000.projects.nitrc.org/indi/abide), autism
    vs typical control from one T1 volume: the phenotype table ``Phenotypic_V1_0b_preprocessed1.csv``
    (the Preprocessed Connectomes Project's copy) or ``Phenotypic_V1_0b.csv`` (option
    ``phenotype`` names another file), columns ``SUB_ID`` and ``DX_GROUP`` (1 = autism, 2 =
    control), and the per-site raw release ``<SITE>/<SUB_ID, 7 digits>/session_1/anat_1/mprage.nii.gz``
    (e.g. ``Pitt/0050003/...``; the site folder's name is not read). Subjects of the table whose folder
    this copy lacks (sites are downloaded one by one) are left out and counted in ``deviations``.
    Class 0 = control, 1 = autism."""

    name = "abide"
    task = "scan-classification"
    root_subdir = "ABIDE"
    default_pretrain_corpus = "abide"
    source = "ABIDE I (fcon_1000.projects.nitrc.org/indi/abide)"
    modalities = ("t1",)
    classes = ("control", "autism")
    label_values = ()
    region_codes: ClassVar[dict] = {}
    study_pattern = r"\d{7}"
    study_example = "0050003"
    PHENOTYPES = ("Phenotypic_V1_0b_preprocessed1.csv", "Phenotypic_V1_0b.csv")
    DX = {"1": 1, "2": 0}
    _extra_defaults = {"phenotype": None}

    def __init__(self, root=None, on_error: str = "raise", **options: Any):
        super().__init__(root, on_error, **options)
        self._dx: dict[str, int] | None = None
        self._absent = 0

    def phenotype_file(self) -> Path:
        root = self._require_root()
        names = [self.opts["phenotype"]] if self.opts["phenotype"] else list(self.PHENOTYPES)
        for name in names:
            if (root / name).is_file():
                return root / name
        raise DataError(
            f"{self.name}: no phenotype table in {root} (looked for {', '.join(names)}); fix: copy the "
            f"release's phenotype CSV there, or name yours with dataset.options.phenotype=FILE."
        )

    def extra_files(self) -> list[Path]:
        try:
            return [self.phenotype_file()]
        except DataError:
            return []

    def _read_table(self) -> dict[str, int]:
        if self._dx is not None:
            return self._dx
        table = self.phenotype_file()
        try:
            with open(table, newline="", encoding="utf-8-sig") as fh:
                rows = list(csv.DictReader(fh))
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise DataError(
                f"{self.name}: {table} cannot be read as CSV ({exc}); fix: re-copy the release's phenotype table."
            ) from exc
        if not rows or not {"SUB_ID", "DX_GROUP"} <= set(rows[0]):
            raise DataError(
                f"{self.name}: {table} lacks the columns SUB_ID and DX_GROUP (it has "
                f"{', '.join(list(rows[0])[:8]) if rows else 'no rows'}); fix: use the release's "
                f"phenotype table."
            )
        dx: dict[str, int] = {}
        for line, row in enumerate(rows, start=2):
            sub, group = (row.get("SUB_ID") or "").strip(), (row.get("DX_GROUP") or "").strip()
            if not sub.isdigit() or group not in self.DX:
                raise DataError(
                    f"{self.name}: {table} line {line}: SUB_ID={sub!r} DX_GROUP={group!r}; a subject id is "
                    f"a number and DX_GROUP is 1 (autism) or 2 (control); fix: correct the row or re-copy "
                    f"the table."
                )
            key = f"{int(sub):07d}"
            if key in dx:
                raise DataError(f"{self.name}: {table} line {line}: subject {sub} is listed twice; fix: keep one row.")
            dx[key] = self.DX[group]
        self._dx = dx
        return dx

    def study_folders(self) -> list[Path]:
        dx = self._read_table()
        root = self._require_root()
        found = sorted(
            p for site in root.iterdir() if site.is_dir() for p in site.iterdir() if p.is_dir() and p.name in dx
        )
        self._absent = len(dx) - len({p.name for p in found})
        return found

    def files(self, case: Path) -> dict[str, Path]:
        return {"t1": case / "session_1" / "anat_1" / "mprage.nii.gz"}

    def class_of(self, case: Path) -> int:
        return self._read_table()[case.name]

    def example(self) -> str:
        return f"{self.root}/Pitt/0050003/session_1/anat_1/mprage.nii.gz"

    def deviations(self) -> list[str]:
        found = super().deviations()
        try:
            self.cases()
        except DataError:
            return found
        if self._absent:
            found.append(
                f"abide: {self._absent} subject(s) of the phenotype table have no scan folder in this copy "
                f"and are left out"
            )
        return found
