"""SLAKE 1.0 (Liu et al. 2021): bilingual radiology VQA; English questions by default.

Layout under ``<data-root>/slake/``: ``train.json``, ``validate.json``, ``test.json`` (the original
release, all languages) and ``imgs/xmlabN/source.jpg``. English sizes: 4,919 / 1,053 / 1,061.
Option ``lang``: ``"en"`` (default, as upstream), ``"zh"`` or ``"all"``.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from umdbench.api import Record
from umdbench.data.vqa_common import VQADataset, load_json_list

SPLIT_FILES = {"train": "train.json", "val": "validate.json", "test": "test.json"}


class Slake(VQADataset):
    name: ClassVar[str] = "slake"
    paper_pretrain_corpus: ClassVar[str] = "roco-medicat"  # UMD pre-trains on ROCO + MedICaT
    # Pre-train on the other VQA datasets" real images (the paper"s ROCO + MedICaT images are not
    # obtainable offline; select them with --cfg-options pretrain.corpus.type=roco-medicat).
    default_pretrain_corpus: ClassVar[dict] = {
        "type": "corpus",
        "options": {"sources": ["vqa-rad", "vqa-med-2019"], "exclude_images_of": ["slake"]},
    }
    version: ClassVar[str] = "1"
    root_subdir: ClassVar[str] = "slake"
    splits: ClassVar[tuple[str, ...]] = ("train", "val", "test")
    option_defaults = {**VQADataset.option_defaults, "lang": "en"}
    option_choices = {**VQADataset.option_choices, "lang": ("en", "zh", "all")}

    def annotation_files(self) -> list[Path]:
        return [p for p in (self.data_dir / f for f in SPLIT_FILES.values()) if p.is_file()]

    def image_dirs(self) -> list[Path]:
        return [self.data_dir / "imgs"]

    def _read(self, split: str) -> list[Record]:
        path = self.data_dir / SPLIT_FILES[split]
        rows = load_json_list(path)
        file = self.rel(path)
        images = self.data_dir / "imgs"
        lang = self.options["lang"]
        out = []
        for i, row in enumerate(rows):
            if not isinstance(row, dict):
                self._bad(
                    f"{file}: record #{i}: expected a JSON object, got {type(row).__name__}; fix: remove or repair it"
                )
                continue
            qid = row.get("qid", f"#{i}")
            where = f"#{i} (qid {qid})"
            missing = [k for k in ("img_name", "question", "answer", "answer_type", "q_lang") if k not in row]
            if missing:
                self._bad(
                    f"{file}: record {where}: missing field(s) {missing}; "
                    "fix: repair the record or re-download the file"
                )
                continue
            if lang != "all" and row["q_lang"] != lang:
                continue
            rec = self._vqa_record(
                file=file,
                where=where,
                uid=f"{self.name}/{split}/{qid}",
                image=str(images / str(row["img_name"])),
                question=row["question"],
                answer=row["answer"],
                answer_type=row["answer_type"],
                extra={
                    k: row[k]
                    for k in ("qid", "img_id", "q_lang", "location", "modality", "content_type", "base_type")
                    if k in row
                },
            )
            if rec is not None:
                out.append(rec)
        return out
