"""MELINDA (Wu et al. 2021): biomedical figure classification by experimental method.

Layout under ``<data-root>/melinda/``: ``train.csv``, ``dev.csv`` (the val split), ``test.csv``
with columns ``figure_file, caption, i_meth, p_meth, i_meth_label, p_meth_label``, and the figures
in ``melinda_images/<figure_file>``. The class column is option ``label`` (default
``p_meth_label``, 7 classes, as M3AE and UMD). Class names are the sorted unique values of that
column over train+dev+test (numbers sort numerically when every value is an integer).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import ClassVar

from umdbench.api import DataError, Record
from umdbench.data.vqa_common import ReleaseDataset

COLUMNS = ("figure_file", "caption", "i_meth", "p_meth", "i_meth_label", "p_meth_label")
SPLIT_FILES = {"train": "train.csv", "val": "dev.csv", "test": "test.csv"}


class Melinda(ReleaseDataset):
    name: ClassVar[str] = "melinda"
    paper_pretrain_corpus: ClassVar[str] = "roco-medicat"  # UMD pre-trains on ROCO + MedICaT
    version: ClassVar[str] = "1"
    task: ClassVar[str] = "classification"
    root_subdir: ClassVar[str] = "melinda"
    splits: ClassVar[tuple[str, ...]] = ("train", "val", "test")
    default_pretrain_corpus: ClassVar[str] = "roco-medicat"
    option_defaults = {"verify_images": True, "label": "p_meth_label"}
    option_choices = {"label": ("i_meth", "p_meth", "i_meth_label", "p_meth_label")}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._classes: list[str] | None = None

    def annotation_files(self) -> list[Path]:
        return [p for p in (self.data_dir / f for f in SPLIT_FILES.values()) if p.is_file()]

    def image_dirs(self) -> list[Path]:
        return [self.data_dir / "melinda_images"]

    def _read(self, split: str) -> list[Record]:
        path = self.data_dir / SPLIT_FILES[split]
        file = self.rel(path)
        column = self.options["label"]
        images = self.data_dir / "melinda_images"
        try:
            fh = open(path, newline="", encoding="utf-8")
        except FileNotFoundError as exc:
            raise DataError(
                f"{path}: file not found; fix: put the MELINDA release's {SPLIT_FILES[split]} there "
                f"(see docs/datasets.md)"
            ) from exc
        try:
            with fh:
                return self._rows(fh, file, split, column, images)
        except UnicodeDecodeError as exc:
            raise DataError(
                f"{path}: not UTF-8 text (offset {exc.start}: {exc.reason}); fix: re-download the file, "
                f"or convert it to UTF-8 if it was saved in another encoding"
            ) from exc

    def _rows(self, fh, file: str, split: str, column: str, images: Path) -> list[Record]:
        out = []
        reader = csv.DictReader(fh)
        header = reader.fieldnames or []
        missing = [c for c in COLUMNS if c not in header]
        if missing:
            raise DataError(
                f"{file}: header row: missing column(s) {missing} (found {header}); fix: use the "
                f"release CSV with columns {', '.join(COLUMNS)}"
            )
        for i, row in enumerate(reader):
            row_no = i + 2  # 1-based line number in the file, after the header
            if None in row or any(v is None for v in row.values()):
                self._bad(
                    f"{file}: record line {row_no}: wrong number of columns (expected {len(COLUMNS)}); "
                    f"fix: repair the row (quote captions that contain commas)"
                )
                continue
            figure, caption, value = row["figure_file"].strip(), row["caption"], row[column].strip()
            if not figure or value == "":
                self._bad(f"{file}: record line {row_no}: empty figure_file or {column}; fix: repair or remove the row")
                continue
            out.append(
                Record(
                    uid=f"{self.name}/{split}/{row_no}",
                    image=str(images / figure),
                    text=caption.strip(),
                    extra={"file": file, "line": row_no, "class_name": value, **{c: row[c] for c in COLUMNS[2:]}},
                )
            )
        return out

    def label_names(self) -> list[str]:
        if self._classes is None:
            values = {r.extra["class_name"] for s in self.splits for r in self.raw_records(s)}
            if values and all(_is_int(v) for v in values):
                self._classes = sorted(values, key=int)
            else:
                self._classes = sorted(values)
        return list(self._classes)

    def _finalise(self, split: str, records: list[Record]) -> None:
        index = {c: i for i, c in enumerate(self.label_names())}
        for r in records:
            r.label = index[r.extra["class_name"]]


def _is_int(v: str) -> bool:
    try:
        int(v)
    except ValueError:
        return False
    return True
