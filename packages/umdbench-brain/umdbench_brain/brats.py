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
when present (a study listed twice, or under two splits, is refused), else a deterministic
70/10/20 split by a hash of the case name (option ``seed``).

Checked before use: :meth:`_BraTS.records` returns only studies whose files pass
:mod:`umdbench_brain.volcheck` (headers, then one decode per file version, remembered in the content
cache), so ``umdbench run`` refuses a bad study (or skips and counts it, ``on_error=skip``) before
any stage trains, and ``umdbench data check`` reports the same problems for every study. The
fingerprint covers the files' content (:meth:`_BraTS.fingerprint`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path
from typing import Any, ClassVar

from umdbench.api import CheckReport, DataError, DatasetPlugin, Record
from umdbench.data.content import content_cache
from umdbench_brain.volcheck import study_problems
from umdbench_brain.volumes import PREPROCESS_MODES

__all__ = ["BraTS2021", "BraTS2023", "BraTS2023PED", "BraTS2023MET"]

SPLIT_FILE = "splits.json"

log = logging.getLogger("umdbench.data")


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
    # what the records hold: their modality names (matched by name with model.modalities; a
    # modality the encoder has and a study lacks is absent: zeros, or a template with *-tmpl) and
    # the segmentation regions as unions of label codes (after label_remap)
    modalities: ClassVar[tuple[str, ...]] = ("t1", "t1c", "t2", "flair")
    region_codes: ClassVar[dict[str, tuple[int, ...]]] = {"WT": (1, 2, 4), "TC": (1, 4), "ET": (4,)}
    # a regular expression study folder names match (None: any), and an example for messages
    study_pattern: ClassVar[str | None] = None
    study_example: ClassVar[str] = ""
    _defaults = {"seed": 0, "preprocess": "released"}

    def __init__(self, root=None, on_error: str = "raise", **options: Any):
        super().__init__(root, on_error, **options)
        unknown = sorted(set(options) - set(self._defaults))
        if unknown:
            raise ValueError(f"{self.name}: unknown option(s) {unknown}; allowed: {sorted(self._defaults)}")
        self.opts = {**self._defaults, **options}
        if self.opts["preprocess"] not in PREPROCESS_MODES:
            raise ValueError(
                f"{self.name}: option preprocess={self.opts['preprocess']!r} is not known; allowed: "
                f"{', '.join(PREPROCESS_MODES)} (released = RAS, 1 mm, foreground crop; none = the "
                f"stored grid), e.g. --cfg-options dataset.options.preprocess=released."
            )
        self._cases: list[Path] | None = None
        self._mapping: dict[str, str] | None = None
        self._records: dict[str, list[Record]] = {}
        self._problems: dict[tuple[str, bool], list[str]] = {}
        self._fingerprint: str | None = None

    # -- layout -------------------------------------------------------------------------------------
    def cases(self) -> list[Path]:
        if self._cases is None:
            if self.root is None:
                raise DataError(
                    f"{self.name} reads files: pass --data-root DIR (the folder holding {self.root_subdir}/)."
                )
            if not self.root.is_dir():
                raise DataError(
                    f"{self.name}: folder {self.root} does not exist; point --data-root at the folder "
                    f"holding {self.root_subdir}/ (one sub-folder per study)."
                )
            self._cases = sorted(p for p in self.root.iterdir() if p.is_dir())
        return self._cases

    def files(self, case: Path) -> dict[str, Path]:
        """``{modality or 'seg': path}`` a study folder must hold."""
        out = {mod: case / f"{case.name}{self.separator}{suffix}.nii.gz" for suffix, mod in self.suffixes.items()}
        out["seg"] = case / f"{case.name}{self.separator}seg.nii.gz"
        return out

    def _split_of(self) -> dict[str, str]:
        """``{study: split}``: from ``splits.json`` when present (each study at most once, only known
        splits and existing study folders), else a deterministic hash split."""
        if self._mapping is not None:
            return self._mapping
        names = [c.name for c in self.cases()]
        split_file = self.root / SPLIT_FILE
        if split_file.is_file():
            self._mapping = self._read_split_file(split_file, set(names))
            return self._mapping
        mapping = {}
        for name in names:
            u = int(hashlib.sha256(f"{self.opts['seed']}:{name}".encode()).hexdigest()[:8], 16) / 2**32
            mapping[name] = "train" if u < 0.7 else ("val" if u < 0.8 else "test")
        self._mapping = mapping
        return mapping

    def _read_split_file(self, split_file: Path, names: set[str]) -> dict[str, str]:
        fix = "fix or delete it (without it the split is drawn by case-name hash)"
        try:
            table = json.loads(split_file.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DataError(
                f"{self.name}: {split_file} is not a JSON object {{split: [case, ...]}} ({exc}); {fix}."
            ) from exc
        if not isinstance(table, dict):
            raise DataError(
                f"{self.name}: {split_file} is not a JSON object {{split: [case, ...]}} (it holds a "
                f"{type(table).__name__}); {fix}."
            )
        unknown_splits = sorted(set(table) - set(self.splits))
        if unknown_splits:
            raise DataError(
                f"{self.name}: {split_file} names split {unknown_splits[0]!r}, which {self.name} does not "
                f"have (its splits are {', '.join(self.splits)}); rename or remove it."
            )
        mapping: dict[str, str] = {}
        for split in self.splits:
            listed = table.get(split, [])
            if not isinstance(listed, list) or not all(isinstance(c, str) for c in listed):
                raise DataError(f"{self.name}: {split_file}: {split!r} must be a list of study folder names; {fix}.")
            for case in listed:
                if case in mapping:
                    where = (
                        f"twice under {split!r}"
                        if mapping[case] == split
                        else f"under both {mapping[case]!r} and {split!r}"
                    )
                    raise DataError(
                        f"{self.name}: {split_file} lists study {case} {where}; a study belongs to one "
                        f"split (a test study trained on inflates its score, a repeated one counts twice); "
                        f"fix: keep it in one split, once."
                    )
                mapping[case] = split
        unknown = sorted(set(mapping) - names)
        if unknown:
            raise DataError(
                f"{self.name}: {split_file} lists studies with no folder, e.g. {unknown[0]}; remove "
                f"them from the file or restore the folders."
            )
        return mapping

    def _split_cases(self, split: str) -> list[Path]:
        if split not in self.splits:
            raise KeyError(f"{self.name}: no split {split!r}; splits are {list(self.splits)}")
        mapping = self._split_of()
        return [case for case in self.cases() if mapping.get(case.name) == split]

    def _record(self, case: Path) -> Record:
        files = self.files(case)
        seg = files.pop("seg")
        return Record(
            uid=case.name,
            image={m: str(p) for m, p in files.items()},
            text="",
            extra={
                "label": str(seg),
                "label_map": dict(self.label_remap),
                "study": case.name,
                "preprocess": self.opts["preprocess"],
                "region_codes": {k: list(v) for k, v in self.region_codes.items()},
            },
        )

    def raw_records(self, split: str) -> list[Record]:
        """The studies of a split as listed, before any file is opened (what ``data check`` counts)."""
        return [self._record(case) for case in self._split_cases(split)]

    def study_problems(self, case: Path, deep: bool = True) -> list[str]:
        """One paragraph per problem of one study (:func:`umdbench_brain.volcheck.study_problems`),
        the decoded facts remembered per file content, so a study is decoded once per version."""
        memo = (case.name, deep)
        if memo not in self._problems:
            files = self.files(case)
            # images first (the first is the grid the others are compared with), the label last;
            # a classification release has none
            files = {
                **{k: v for k, v in files.items() if k != "seg"},
                **({"seg": files["seg"]} if "seg" in files else {}),
            }
            cache = content_cache(self.root) if deep else None
            found = self.name_problems(case)
            found += study_problems(
                self.name,
                case.name,
                files,
                label_values=self.label_values,
                label_map=self.label_remap,
                deep=deep,
                cache=cache,
            )
            self._problems[memo] = found
            if cache is not None:
                cache.save()
        return self._problems[memo]

    def name_problems(self, case: Path) -> list[str]:
        """A study folder whose name is not one of this release's (:attr:`study_pattern`), e.g. a
        BraTS-GLI study in the PED reader's folder: one paragraph, else nothing."""
        if self.study_pattern is None or re.fullmatch(self.study_pattern, case.name):
            return []
        return [
            f"{self.name}: study {case.name}: folder {case} is not named as a study of {self.name}'s release "
            f"(expected e.g. {self.study_example}); it belongs to another release; fix: move it out of "
            f"{self.root} (or read it with the reader of its release), or leave it out with --cfg-options "
            f"dataset.on_error=skip."
        ]

    def records(self, split: str) -> list[Record]:
        """The usable studies of a split: every file present, its header and its decoded content
        checked (:meth:`study_problems`; once per file version, through the content cache). A bad
        study raises :class:`DataError` naming it, the file and the fix, or (``on_error=skip``) is
        left out and counted in ``skipped``. An empty split, or one whose every study was left
        out, is an error too: nothing could train or be evaluated on it."""
        if split in self._records:
            return list(self._records[split])
        cases = self._split_cases(split)
        where = f"{SPLIT_FILE} in {self.root}" if (self.root / SPLIT_FILE).is_file() else "the case-name hash split"
        if not cases:
            raise DataError(
                f"{self.name}: split {split!r} has no studies (by {where}; {len(self.cases())} study "
                f"folder(s) in {self.root}); fix: list studies under {split!r} in {self.root / SPLIT_FILE}, "
                f"or evaluate on another split (--cfg-options eval.split=...). Nothing was trained."
            )
        out, skipped = [], []
        for case in cases:
            problems = self.study_problems(case)
            if not problems:
                out.append(self._record(case))
                continue
            more = (
                f"; {len(problems) - 1} more problem(s) in this study, which `umdbench data check {self.name}` lists"
                if len(problems) > 1
                else ""
            )
            message = f"{problems[0].rstrip('.')} (split {split!r}{more})."
            if self.on_error == "raise":
                raise DataError(f"{message} Nothing was trained.")
            skipped.append(message)
        if skipped:
            self.skipped.extend(skipped)
            log.warning(
                "dataset %s split %s: %d study(ies) skipped (on_error=skip), %d kept: %s",
                self.name,
                split,
                len(skipped),
                len(out),
                skipped[0],
            )
        if not out:
            raise DataError(
                f"{self.name}: every study of split {split!r} was left out (on_error=skip), the first for: {skipped[0]}"
            )
        self._records[split] = out
        return list(out)

    def label_names(self) -> list[str]:
        return ["WT", "TC", "ET"]

    def deviations(self) -> list[str]:
        if self.opts["preprocess"] == "none":
            return [
                "preprocess=none: volumes used on their stored grid (released: RAS orientation, 1 mm isotropic "
                "resampling and a foreground crop before percentile scaling, the released pre-processing)"
            ]
        return []

    def fingerprint(self) -> str:
        """sha256 over the plugin, its options, ``splits.json`` and the content of every file a
        study reads (each hashed once per file version, :mod:`umdbench.data.content`); other files
        of a study folder by name and size. A label recoded in a file of the same size, or another
        copy of the data in the folder, changes it; the same copy in another folder does not."""
        if self._fingerprint is not None:
            return self._fingerprint
        cache = content_cache(self.root if self.root is not None else ".")
        h = hashlib.sha256(f"{self.name}:{self.version}:{sorted(self.opts.items())}".encode())
        for case in self.cases():
            needed = {p.name for p in self.files(case).values()}
            for p in sorted(case.iterdir()):
                if p.name in needed:
                    try:
                        digest = cache.sha256(p)
                    except OSError:  # missing or a dangling link: records() and data check name it
                        digest = "unreadable"
                    h.update(f"{case.name}/{p.name}:{digest}\n".encode())
                else:
                    try:
                        size = p.lstat().st_size
                    except OSError:
                        size = -1
                    h.update(f"{case.name}/{p.name}:size {size}\n".encode())
        split_file = self.root / SPLIT_FILE
        if split_file.is_file():
            h.update(b"\0splits\0" + split_file.read_bytes())
        cache.save()
        self._fingerprint = h.hexdigest()
        return self._fingerprint

    # -- check ----------------------------------------------------------------------------------
    def check(self, deep: bool = False) -> CheckReport:
        """What ``umdbench data check`` reports: ``splits.json`` (known splits, each study once),
        empty study folders and, per study, exactly what :meth:`records` refuses
        (:meth:`study_problems`): missing files, dangling links, unreadable headers, volumes that
        are not 3-D or over the size limit, shapes or affines that differ, and with ``deep`` (one
        decode per file version) truncated data, NaN/inf voxels, blank modalities and label codes
        outside the release's."""
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
            rep.problems.append(
                f"{self.name}: {self.root} holds no study folders; expected one folder per study, "
                f"e.g. {self.example()}."
            )
        for case in cases:
            where = f"{self.name}: study {case.name}"
            if case.is_dir() and not any(case.iterdir()):
                rep.problems.append(f"{where}: folder {case} is empty; re-copy the study or delete the folder.")
                continue
            rep.problems.extend(self.study_problems(case, deep=deep))
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


class BraTS2023PED(BraTS2023):
    """BraTS 2023 pediatric tumours (BraTS-PEDs), the training release as distributed on Synapse:
    ``ASNR-MICCAI-BraTS2023-PED-Challenge-TrainingData/BraTS-PED-NNNNN-NNN/BraTS-PED-NNNNN-NNN-{t1c,t1n,
    t2f,t2w,seg}.nii.gz``; labels 0/1/2/3 as the other 2023 releases (3 = enhancing, read as 4)."""

    name = "brats2023-ped"
    root_subdir = "ASNR-MICCAI-BraTS2023-PED-Challenge-TrainingData"
    default_pretrain_corpus = "brats2023-ped"
    study_pattern = r"BraTS-PED-\d{5}-\d{3}"
    study_example = "BraTS-PED-00001-000"


class BraTS2023MET(BraTS2023):
    """BraTS 2023 brain metastases (BraTS-METS), the training release as distributed on Synapse:
    ``ASNR-MICCAI-BraTS2023-MET-Challenge-TrainingData/BraTS-MET-NNNNN-NNN/BraTS-MET-NNNNN-NNN-{t1c,t1n,
    t2f,t2w,seg}.nii.gz``; labels 0/1/2/3 (3 = enhancing, read as 4)."""

    name = "brats2023-met"
    root_subdir = "ASNR-MICCAI-BraTS2023-MET-Challenge-TrainingData"
    default_pretrain_corpus = "brats2023-met"
    study_pattern = r"BraTS-MET-\d{5}-\d{3}"
    study_example = "BraTS-MET-00001-000"
