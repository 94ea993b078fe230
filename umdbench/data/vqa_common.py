"""Shared machinery of the release-format dataset plugins (VQA and others).

:class:`ReleaseDataset` handles options, the data folder, error policy (raise / skip + count),
per-split caching, image existence, fingerprints and ``check()``. :class:`VQADataset` adds the
answer vocabulary (upstream rule: VQA-v2-normalised answers of train+val+test, first-seen order
starting with train; option ``vocab="train"`` keeps train answers only and gives unseen answers
label -1).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, ClassVar

from umdbench.api import CheckReport, DataError, DatasetPlugin, Record
from umdbench.util import DATA_ROOT_ENV

from .answers import normalize_answer
from .check import check_images, iter_image_refs
from .fingerprint import dataset_fingerprint, sha256_file

__all__ = ["ReleaseDataset", "VQADataset", "load_json_list", "read_text_lines"]

log = logging.getLogger("umdbench.data")


def read_text_lines(path: Path) -> list[str]:
    """Lines of a text file (no line endings). Missing file -> DataError with the fix."""
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read().splitlines()
    except FileNotFoundError as exc:
        raise DataError(
            f"{path}: file not found; fix: download the release into this folder (see docs/datasets.md) "
            f"or point --data-root / {DATA_ROOT_ENV} at the right folder"
        ) from exc
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc}); fix: re-download the file") from exc


def load_json_list(path: Path) -> list:
    """A JSON file holding a list. Missing/invalid file -> DataError naming the file."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except FileNotFoundError as exc:
        raise DataError(
            f"{path}: file not found; fix: download the release into this folder (see docs/datasets.md) "
            f"or point --data-root / {DATA_ROOT_ENV} at the right folder"
        ) from exc
    except json.JSONDecodeError as exc:
        raise DataError(
            f"{path}: invalid JSON at line {exc.lineno} column {exc.colno} ({exc.msg}); "
            f"fix: re-download the file (it is damaged or was edited)"
        ) from exc
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{path}: not UTF-8 text (byte {exc.object[exc.start : exc.start + 1]!r} at offset {exc.start}: "
            f"{exc.reason}), so its JSON cannot be read; fix: re-download the file, or convert it to "
            f"UTF-8 if it was saved in another encoding (e.g. `iconv -f latin1 -t utf-8`)"
        ) from exc
    if not isinstance(data, list):
        raise DataError(
            f"{path}: expected a JSON list of records, got {type(data).__name__}; fix: use the release file"
        )
    return data


class ReleaseDataset(DatasetPlugin):
    """Base of plugins that read a dataset's public release layout from ``root``.

    Subclasses implement :meth:`_read` (all records of a split as listed in the annotations, images
    not yet checked), :meth:`annotation_files` and :meth:`image_dirs`. Malformed input goes through
    :meth:`_bad`, which raises :class:`DataError`, or with ``on_error="skip"`` appends the message
    to ``self.skipped`` and drops the record.
    """

    option_defaults: ClassVar[dict[str, Any]] = {"verify_images": True}
    option_choices: ClassVar[dict[str, tuple]] = {}

    def __init__(self, root: str | Path | None = None, on_error: str = "raise", **options: Any):
        unknown = sorted(set(options) - set(self.option_defaults))
        if unknown:
            raise ValueError(
                f"dataset {self.name!r}: unknown option(s) {unknown}; known options: {sorted(self.option_defaults)}"
            )
        merged = {**self.option_defaults, **options}
        for key, choices in self.option_choices.items():
            if merged[key] not in choices:
                raise ValueError(f"dataset {self.name!r}: option {key}={merged[key]!r} must be one of {list(choices)}")
        super().__init__(root, on_error, **merged)
        self._raw: dict[str, list[Record]] = {}
        self._records: dict[str, list[Record]] = {}
        self._fingerprint: str | None = None
        self._sink: list[str] | None = None

    # -- helpers for subclasses -------------------------------------------------------------------
    @property
    def data_dir(self) -> Path:
        if self.root is None:
            raise DataError(
                f"dataset {self.name!r}: no data folder given; fix: pass --data-root DIR (the folder "
                f"holding {self.root_subdir or self.name}/) or set {DATA_ROOT_ENV}=DIR"
            )
        if not self.root.is_dir():
            raise DataError(
                f"dataset {self.name!r}: data folder {self.root} does not exist; fix: pass --data-root DIR "
                f"(the folder holding {self.root_subdir or self.name}/) or set {DATA_ROOT_ENV}=DIR, or "
                f"run `umdbench data download {self.name}` where a public URL exists"
            )
        return self.root

    def rel(self, path: str | Path) -> str:
        """``path`` relative to the data folder, for messages."""
        try:
            return Path(path).relative_to(self.root).as_posix() if self.root else str(path)
        except ValueError:
            return str(path)

    def _bad(self, msg: str) -> None:
        """Report a bad record: collected by check(), skipped+counted, or raised."""
        if self._sink is not None:
            self._sink.append(msg)
        elif self.on_error == "skip":
            self.skipped.append(msg)
        else:
            raise DataError(msg)

    def _check_split(self, split: str) -> None:
        if split not in self.splits:
            raise ValueError(f"dataset {self.name!r} has no split {split!r}; its splits are {list(self.splits)}")

    # -- subclass API -----------------------------------------------------------------------------
    def _read(self, split: str) -> list[Record]:
        raise NotImplementedError

    def annotation_files(self) -> list[Path]:
        """Existing annotation files this plugin reads (fingerprint, checksums)."""
        raise NotImplementedError

    def image_dirs(self) -> list[Path]:
        return []

    def _finalise(self, split: str, records: list[Record]) -> None:
        """Hook run once per split on the kept records (e.g. assign labels)."""

    # -- DatasetPlugin ----------------------------------------------------------------------------
    def raw_records(self, split: str) -> list[Record]:
        """Records as listed in the annotation files (malformed ones handled; images not checked)."""
        self._check_split(split)
        if split not in self._raw:
            self._raw[split] = self._read(split)
        return self._raw[split]

    def records(self, split: str) -> list[Record]:
        self._check_split(split)
        if split not in self._records:
            kept = []
            n_skipped = len(self.skipped)
            for r in self.raw_records(split):
                if self.options.get("verify_images", True) and isinstance(r.image, str) and not os.path.isfile(r.image):
                    self._bad(
                        f"{r.extra.get('file', '?')}: record {r.uid}: image {self.rel(r.image)} not found; "
                        f"fix: restore the image (re-download the release) or use on_error='skip' to leave "
                        f"such records out"
                    )
                    continue
                kept.append(r)
            self._finalise(split, kept)
            self._records[split] = kept
            if len(self.skipped) > n_skipped:
                log.warning(
                    "dataset %s split %s: %d record(s) skipped (see .skipped), %d kept",
                    self.name,
                    split,
                    len(self.skipped) - n_skipped,
                    len(kept),
                )
        return list(self._records[split])

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            base = self.data_dir
            self._fingerprint = dataset_fingerprint(
                self.name, self.version, self.options, self.annotation_files(), self.image_dirs(), base=base
            )
        return self._fingerprint

    def check(self, deep: bool = True) -> CheckReport:
        """Counts per split (records listed in the annotations), malformed records, missing or
        unreadable images, and sha256 of every annotation file. ``deep`` fully decodes images."""
        report = CheckReport(dataset=self.name, root=str(self.root) if self.root is not None else None)
        try:
            base = self.data_dir
        except DataError as exc:
            report.problems.append(str(exc))
            return report
        for f in self.annotation_files():
            report.checksums[self.rel(f)] = sha256_file(f)
        refs: dict[str, list[str]] = {}
        for split in self.splits:
            sink: list[str] = []
            self._sink = sink
            try:
                recs = self._read(split)
            except DataError as exc:
                report.problems.append(str(exc))
                continue
            finally:
                self._sink = None
            report.problems.extend(sink)
            report.counts[split] = len(recs)
            for path, uids in iter_image_refs(recs).items():
                refs.setdefault(path, []).extend(uids)
        report.problems.extend(check_images(refs, deep=deep, base=base))
        report.problems.extend(self._extra_checks())
        return report

    def _extra_checks(self) -> list[str]:
        return []


class VQADataset(ReleaseDataset):
    """VQA plugin base: answer normalisation, answer types and the answer vocabulary."""

    task: ClassVar[str] = "vqa"
    default_pretrain_corpus: ClassVar[str | None] = "roco-medicat"
    option_defaults: ClassVar[dict[str, Any]] = {"verify_images": True, "vocab": "all"}
    option_choices: ClassVar[dict[str, tuple]] = {"vocab": ("all", "train")}

    def __init__(self, root: str | Path | None = None, on_error: str = "raise", **options: Any):
        super().__init__(root, on_error, **options)
        self._vocab: list[str] | None = None

    def _vqa_record(
        self,
        *,
        file: str,
        where: str,
        uid: str,
        image: str,
        question: Any,
        answer: Any,
        answer_type: Any,
        extra: dict | None = None,
    ) -> Record | None:
        """Validate one QA row; returns None (after :meth:`_bad`) when it is malformed."""
        if not isinstance(question, str) or not question.strip():
            self._bad(f"{file}: record {where}: question is missing or empty; fix: correct or remove this record")
            return None
        # an empty answer string is kept as upstream does (SLAKE train qid 1622 has one); None is not.
        # A JSON true/false is refused, not converted: str() would make it the answer "true", which
        # no release uses, and reading it as "yes"/"no" would be a guess about what the editor meant
        if isinstance(answer, bool):
            self._bad(
                f"{file}: record {where}: answer is the JSON boolean {str(answer).lower()}, not text; answers "
                f'are strings (or numbers) and a boolean is not guessed to mean "yes"/"no"; fix: write the '
                f'answer as text (e.g. "yes") or remove this record'
            )
            return None
        if answer is None or isinstance(answer, (dict, list)):
            self._bad(
                f"{file}: record {where}: answer is missing or not a string/number; fix: correct or remove this record"
            )
            return None
        kind = str(answer_type).strip().lower() if isinstance(answer_type, str) else None
        if kind not in ("open", "closed"):
            self._bad(
                f"{file}: record {where}: unknown answer type {answer_type!r} (expected OPEN or CLOSED); "
                f"fix: correct the answer_type field of this record or remove the record"
            )
            return None
        ex = {"file": file, "raw_answer": str(answer)}
        if extra:
            ex.update(extra)
        return Record(
            uid=uid, image=image, text=question.strip(), answer=normalize_answer(answer), answer_type=kind, extra=ex
        )

    def label_names(self) -> list[str]:
        if self._vocab is None:
            splits = ("train",) if self.options["vocab"] == "train" else tuple(self.splits)
            seen: dict[str, None] = {}
            for split in splits:
                for r in self.raw_records(split):
                    seen.setdefault(r.answer, None)
            self._vocab = list(seen)
        return list(self._vocab)

    def _finalise(self, split: str, records: list[Record]) -> None:
        index = {a: i for i, a in enumerate(self.label_names())}
        for r in records:
            r.label = index.get(r.answer, -1)
