"""BraTS release readers (segmentation of WT/TC/ET), reading NIfTI through nibabel.

Layouts (one folder per study under ``<data root>/<root_subdir>``):

* ``brats2021`` (root_subdir ``brats2021``): ``<case>/<case>_{flair,t1,t1ce,t2,seg}.nii.gz``;
  labels 0/1/2/4 (4 = enhancing).
* ``brats2023`` (root_subdir ``brats2023``): ``<case>/<case>-{t1c,t1n,t2f,t2w,seg}.nii.gz``;
  labels 0/1/2/3 (3 = enhancing), remapped 3 -> 4 when read so both releases share one region rule.

Pre-processing (option ``preprocess``): ``released`` (default) = the released fine-tuning transforms,
RAS orientation, 1 mm isotropic resampling (label nearest neighbour) and a crop to the foreground of
all modalities, before the per-channel percentile scaling (``umdbench_brain.volumes``); ``none`` =
volumes on their stored grid, a recorded deviation. Pre-processed studies are cached on disk by the
task types (``StudyLoader``), so only the first epoch decodes and resamples the NIfTI files.

File suffixes map to this package's modality names (t1, t1c, t2, flair). Splits: a
``splits.json`` in the dataset folder (``{"train": [case, ...], "val": [...], "test": [...]}``)
when present, else a deterministic 70/10/20 split by a hash of the case name (option ``seed``).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from umdbench.api import CheckReport, DataError, DatasetPlugin, Record
from umdbench_brain.volumes import PREPROCESS_MODES

__all__ = ["BraTS2021", "BraTS2023"]

SPLIT_FILE = "splits.json"


class _BraTS(DatasetPlugin):
    task = "segmentation"
    encoder = "uniformer3d"  # the released backbone on the paper's data; brainsynth (a CPU phantom) keeps resunet3d
    needs_root = True
    version = "1"
    # file suffix -> canonical modality
    suffixes: ClassVar[dict[str, str]] = {}
    separator: ClassVar[str] = "_"
    label_values: ClassVar[tuple[int, ...]] = ()
    label_remap: ClassVar[dict[int, int]] = {}
    _defaults = {"seed": 0, "preprocess": "released"}

    def __init__(self, root=None, on_error: str = "raise", **options: Any):
        super().__init__(root, on_error, **options)
        unknown = sorted(set(options) - set(self._defaults))
        if unknown:
            raise ValueError(f"{self.name}: unknown option(s) {unknown}; allowed: {sorted(self._defaults)}")
        self.opts = {**self._defaults, **options}
        if self.opts["preprocess"] not in PREPROCESS_MODES:
            raise ValueError(f"{self.name}: option preprocess={self.opts['preprocess']!r} is not known; allowed: "
                             f"{', '.join(PREPROCESS_MODES)} (released = RAS, 1 mm, foreground crop; none = the "
                             f"stored grid), e.g. --cfg-options dataset.options.preprocess=released.")
        self._cases: list[Path] | None = None

    # -- layout -------------------------------------------------------------------------------------
    def cases(self) -> list[Path]:
        if self._cases is None:
            if self.root is None:
                raise DataError(f"{self.name} reads files: pass --data-root DIR (the folder holding "
                                f"{self.root_subdir}/).")
            if not self.root.is_dir():
                raise DataError(f"{self.name}: folder {self.root} does not exist; point --data-root at the folder "
                                f"holding {self.root_subdir}/ (one sub-folder per study).")
            self._cases = sorted(p for p in self.root.iterdir() if p.is_dir())
        return self._cases

    def files(self, case: Path) -> dict[str, Path]:
        """``{modality or 'seg': path}`` a study folder must hold."""
        out = {mod: case / f"{case.name}{self.separator}{suffix}.nii.gz" for suffix, mod in self.suffixes.items()}
        out["seg"] = case / f"{case.name}{self.separator}seg.nii.gz"
        return out

    def _split_of(self) -> dict[str, str]:
        names = [c.name for c in self.cases()]
        split_file = self.root / SPLIT_FILE
        if split_file.is_file():
            try:
                table = json.loads(split_file.read_text())
                mapping = {case: split for split in self.splits for case in table.get(split, [])}
            except (json.JSONDecodeError, AttributeError, TypeError) as exc:
                raise DataError(f"{self.name}: {split_file} is not a JSON object {{split: [case, ...]}} ({exc}); "
                                f"fix or delete it (without it the split is drawn by case-name hash).") from exc
            unknown = sorted(set(mapping) - set(names))
            if unknown:
                raise DataError(f"{self.name}: {split_file} lists studies with no folder, e.g. {unknown[0]}; remove "
                                f"them from the file or restore the folders.")
            return mapping
        mapping = {}
        for name in names:
            u = int(hashlib.sha256(f"{self.opts['seed']}:{name}".encode()).hexdigest()[:8], 16) / 2**32
            mapping[name] = "train" if u < 0.7 else ("val" if u < 0.8 else "test")
        return mapping

    def records(self, split: str) -> list[Record]:
        if split not in self.splits:
            raise KeyError(f"{self.name}: no split {split!r}; splits are {list(self.splits)}")
        mapping = self._split_of()
        out = []
        for case in self.cases():
            if mapping.get(case.name) != split:
                continue
            files = self.files(case)
            missing = [p for p in files.values() if not p.is_file()]
            if missing:
                message = (f"{self.name}: study {case.name}: file {missing[0]} is missing"
                           f"{f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''}; re-copy the study from "
                           f"the release, or pass --cfg-options dataset.on_error=skip to leave it out.")
                if self.on_error == "raise":
                    raise DataError(message)
                self.skipped.append(message)
                continue
            seg = files.pop("seg")
            out.append(Record(uid=case.name, image={m: str(p) for m, p in files.items()}, text="",
                              extra={"label": str(seg), "label_map": dict(self.label_remap), "study": case.name,
                                     "preprocess": self.opts["preprocess"]}))
        return out

    def label_names(self) -> list[str]:
        return ["WT", "TC", "ET"]

    def deviations(self) -> list[str]:
        if self.opts["preprocess"] == "none":
            return ["preprocess=none: volumes used on their stored grid (released: RAS orientation, 1 mm isotropic "
                    "resampling and a foreground crop before percentile scaling, notes/brainmvp-spec.md 1.6)"]
        return []

    def fingerprint(self) -> str:
        h = hashlib.sha256(f"{self.name}:{self.version}:{self.opts}".encode())
        for case in self.cases():
            for p in sorted(case.iterdir()):
                h.update(f"{case.name}/{p.name}:{p.stat().st_size}".encode())
        split_file = self.root / SPLIT_FILE
        if split_file.is_file():
            h.update(split_file.read_bytes())
        return h.hexdigest()

    # -- check ----------------------------------------------------------------------------------
    def check(self, deep: bool = False) -> CheckReport:
        """Per study: an empty folder, a missing file, a file nibabel cannot read (not NIfTI, or
        truncated: found by ``deep``, which decodes every volume), shape or affine mismatch between
        the study's files, and (``deep``) label values outside the release's codes."""
        import nibabel as nib

        rep = CheckReport(dataset=self.name, root=str(self.root))
        try:
            cases = self.cases()
            mapping = self._split_of()
        except DataError as exc:
            rep.problems.append(str(exc))
            return rep
        split_file = self.root / SPLIT_FILE
        if split_file.is_file():
            rep.checksums[SPLIT_FILE] = hashlib.sha256(split_file.read_bytes()).hexdigest()
        for split in self.splits:
            rep.counts[split] = sum(1 for c in cases if mapping.get(c.name) == split)
        if not cases:
            rep.problems.append(f"{self.name}: {self.root} holds no study folders; expected one folder per study, "
                                f"e.g. {self.example()}.")
        for case in cases:
            where = f"{self.name}: study {case.name}"
            if not any(case.iterdir()):
                rep.problems.append(f"{where}: folder {case} is empty; re-copy the study or delete the folder.")
                continue
            grid = None  # (file, shape, affine) of the first readable volume
            for key, path in self.files(case).items():
                if not path.is_file():
                    rep.problems.append(f"{where}: missing {path.name} ({'label' if key == 'seg' else key}); expected "
                                        f"{path}; re-copy it from the release.")
                    continue
                try:
                    img = nib.load(str(path))
                    shape, affine = tuple(img.shape), np.asarray(img.affine)
                    data = np.asanyarray(img.dataobj) if deep else None
                except Exception as exc:  # nibabel raises several types for foreign or truncated files
                    rep.problems.append(f"{where}: {path} is not a readable NIfTI volume ({type(exc).__name__}: "
                                        f"{str(exc).splitlines()[0][:120]}); re-copy it from the release.")
                    continue
                if grid is None:
                    grid = (path.name, shape, affine)
                elif shape != grid[1]:
                    rep.problems.append(f"{where}: {path.name} has shape {shape} but {grid[0]} has {grid[1]}; the "
                                        f"files of a study must share one grid (resample or re-copy them).")
                elif not np.allclose(affine, grid[2], atol=1e-3):
                    rep.problems.append(f"{where}: {path.name} has a different affine from {grid[0]} (the volumes are "
                                        f"not co-registered); resample them onto one grid or re-copy the study.")
                if deep and key == "seg" and data is not None:
                    values = sorted(int(v) for v in np.unique(data))
                    bad = [v for v in values if v not in self.label_values]
                    if bad:
                        rep.problems.append(f"{where}: {path.name} has label values {bad} outside {list(self.label_values)} "
                                            f"({self.name} coding); fix the label file or read it with the reader "
                                            f"of its release.")
        return rep

    def example(self) -> str:
        return f"{self.root}/CASE/CASE{self.separator}seg.nii.gz"


class BraTS2021(_BraTS):
    """BraTS 2021 training release (also 2018-2020 after renaming ``t1ce`` files alike)."""

    name = "brats2021"
    root_subdir = "brats2021"
    default_pretrain_corpus = "brats2021"  # its own studies, as unlabelled volumes
    suffixes = {"flair": "flair", "t1": "t1", "t1ce": "t1c", "t2": "t2"}
    separator = "_"
    label_values = (0, 1, 2, 4)
    label_remap: ClassVar[dict[int, int]] = {}


class BraTS2023(_BraTS):
    """BraTS 2023 releases (GLI, MEN, MET, PED, SSA): enhancing tumour coded 3, remapped to 4."""

    name = "brats2023"
    root_subdir = "brats2023"
    default_pretrain_corpus = "brats2023"
    suffixes = {"t1c": "t1c", "t1n": "t1", "t2f": "flair", "t2w": "t2"}
    separator = "-"
    label_values = (0, 1, 2, 3)
    label_remap: ClassVar[dict[int, int]] = {3: 4}
