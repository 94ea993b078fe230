"""VQA-Med-2019 (ImageCLEF 2019): radiology VQA in four categories; every question is open.

Layout under ``<data-root>/vqa_med_2019/`` (the ImageCLEF release folders, renamed per split):

* ``train/QAPairsByCategory/C{1..4}_{Modality,Plane,Organ,Abnormality}_train.txt`` + ``train/Train_images/``
* ``val/QAPairsByCategory/C{1..4}_*_val.txt`` + ``val/Val_images/``
* ``test/VQAMed2019_Test_Questions_w_Ref_Answers.txt`` (``image|category|question|answer``) +
  ``test/VQAMed2019_Test_Images/``

Category files have ``image_id|question|answer`` lines. Abnormality (C4) is left out by default as
upstream does (option ``include_abnormality``). Categories are read in upstream order Modality,
Organ, Plane (which fixes the first-seen order of the answer vocabulary). Test answers with ``#``
alternatives are kept whole by default (``multi_answer="whole"``, as upstream: 79 answers); the
alternatives are in ``Record.extra["alternatives"]``; ``multi_answer="first"`` uses the first one.

Incomplete copies (the shared one has no test images and 1,000 of the 3,200 training images):
``eval_split_fallback="val"`` evaluates on the validation split when any test image is missing,
and ``train_missing_images="skip"`` trains on the training records whose images exist. Both are
off by default (such a copy is then "data unavailable"); when they act, :meth:`deviations` says
so and every run records it.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from umdbench.api import Record
from umdbench.data.answers import normalize_answer
from umdbench.data.vqa_common import VQADataset, read_text_lines

CATEGORY_FILES = {"modality": "C1_Modality", "plane": "C2_Plane", "organ": "C3_Organ", "abnormality": "C4_Abnormality"}
ORDER = ("modality", "organ", "plane", "abnormality")  # upstream reading order
IMAGE_DIRS = {"train": "train/Train_images", "val": "val/Val_images", "test": "test/VQAMed2019_Test_Images"}
TEST_FILE = "test/VQAMed2019_Test_Questions_w_Ref_Answers.txt"


class VQAMed2019(VQADataset):
    name: ClassVar[str] = "vqa-med-2019"
    paper_pretrain_corpus: ClassVar[str] = "roco-medicat"  # UMD pre-trains on ROCO + MedICaT
    # Pre-train on the other VQA datasets" real images (the paper"s ROCO + MedICaT images are not
    # obtainable offline; select them with --cfg-options pretrain.corpus.type=roco-medicat).
    default_pretrain_corpus: ClassVar[dict] = {
        "type": "corpus",
        "options": {"sources": ["vqa-rad", "slake"], "exclude_images_of": ["vqa-med-2019"]},
    }
    version: ClassVar[str] = "1"
    root_subdir: ClassVar[str] = "vqa_med_2019"
    splits: ClassVar[tuple[str, ...]] = ("train", "val", "test")
    option_defaults = {
        **VQADataset.option_defaults,
        "include_abnormality": False,
        "multi_answer": "whole",
        "eval_split_fallback": None,
        "train_missing_images": "raise",
    }
    option_choices = {
        **VQADataset.option_choices,
        "include_abnormality": (True, False),
        "multi_answer": ("whole", "first"),
        "eval_split_fallback": (None, "val"),
        "train_missing_images": ("raise", "skip"),
    }

    def _test_images_missing(self) -> bool:
        if self.options["eval_split_fallback"] != "val":
            return False
        if not hasattr(self, "_no_test_images"):
            listed = self._read_listed("test")
            self._no_test_images = not listed or any(not Path(r.image).is_file() for r in listed)
        return self._no_test_images

    def deviations(self) -> list[str]:
        out = []
        if self._test_images_missing():
            out.append(
                f"vqa-med-2019: this copy lacks test images ({IMAGE_DIRS['test']}/), so the test split is "
                f"replaced by the validation split ({len(self._read_listed('val'))} questions; "
                f"eval_split_fallback=val); numbers are not comparable with the paper's test accuracy"
            )
        if self.options["train_missing_images"] == "skip":
            listed = self._read_listed("train")
            kept = sum(Path(r.image).is_file() for r in listed)
            if kept < len(listed):
                out.append(
                    f"vqa-med-2019: trained on the {kept} of {len(listed)} training questions whose images "
                    f"exist in this copy (train_missing_images=skip)"
                )
        return out

    def categories(self) -> tuple[str, ...]:
        return ORDER if self.options["include_abnormality"] else ORDER[:3]

    def split_files(self, split: str) -> list[Path]:
        if split == "test":
            return [self.data_dir / TEST_FILE]
        return [
            self.data_dir / split / "QAPairsByCategory" / f"{CATEGORY_FILES[c]}_{split}.txt" for c in self.categories()
        ]

    def annotation_files(self) -> list[Path]:
        return [f for s in self.splits for f in self.split_files(s) if f.is_file()]

    def image_dirs(self) -> list[Path]:
        return [self.data_dir / IMAGE_DIRS[s] for s in self.splits]

    def _row(self, split, file, lineno, category, image_id, question, answer) -> Record | None:
        alternatives = [normalize_answer(a) for a in answer.split("#")] if "#" in answer else None
        use = answer.split("#")[0] if (alternatives and self.options["multi_answer"] == "first") else answer
        extra = {"category": category, "line": lineno}
        if alternatives:
            extra["alternatives"] = alternatives
        return self._vqa_record(
            file=file,
            where=f"line {lineno}",
            uid=f"{self.name}/{split}/{category}/{lineno}",
            image=str(self.data_dir / IMAGE_DIRS[split] / f"{image_id}.jpg"),
            question=question,
            answer=use,
            answer_type="OPEN",
            extra=extra,
        )

    def _read(self, split: str) -> list[Record]:
        if split == "test" and self._test_images_missing():
            return self._read_listed("val")  # recorded by deviations()
        records = self._read_listed(split)
        if split == "train" and self.options["train_missing_images"] == "skip":
            records = [r for r in records if Path(r.image).is_file()]  # recorded by deviations()
        return records

    def _read_listed(self, split: str) -> list[Record]:
        """Every record the split's annotation files list (read once)."""
        cache = self.__dict__.setdefault("_listed", {})
        if split not in cache:
            cache[split] = self._read_files(split)
        return cache[split]

    def _read_files(self, split: str) -> list[Record]:
        out: list[Record] = []
        if split == "test":
            path = self.split_files("test")[0]
            file = self.rel(path)
            by_cat: dict[str, list[Record]] = {c: [] for c in self.categories()}
            for lineno, line in enumerate(read_text_lines(path), 1):
                if not line.strip():
                    continue
                parts = line.split("|")
                if len(parts) != 4:
                    self._bad(
                        f"{file}: line {lineno}: expected 4 '|'-separated fields image|category|question|answer, "
                        f"got {len(parts)}; fix: repair the line or re-download the file"
                    )
                    continue
                image_id, category, question, answer = (p.strip() for p in parts)
                if category not in CATEGORY_FILES:
                    self._bad(
                        f"{file}: line {lineno}: unknown category {category!r} (expected one of "
                        f"{list(CATEGORY_FILES)}); fix: repair the line"
                    )
                    continue
                if category not in by_cat:
                    continue
                rec = self._row(split, file, lineno, category, image_id, question, answer)
                if rec is not None:
                    by_cat[category].append(rec)
            for c in self.categories():
                out.extend(by_cat[c])
            return out
        for category, path in zip(self.categories(), self.split_files(split)):
            file = self.rel(path)
            for lineno, line in enumerate(read_text_lines(path), 1):
                if not line.strip():
                    continue
                parts = line.split("|")
                if len(parts) != 3:
                    self._bad(
                        f"{file}: line {lineno}: expected 3 '|'-separated fields image|question|answer, "
                        f"got {len(parts)}; fix: repair the line or re-download the file"
                    )
                    continue
                image_id, question, answer = (p.strip() for p in parts)
                rec = self._row(split, file, lineno, category, image_id, question, answer)
                if rec is not None:
                    out.append(rec)
        return out
