"""VQA-RAD (Lau et al. 2018): 315 radiology images, closed- and open-ended QA.

Layouts under ``<data-root>/vqa_rad/``:

* ``layout="mevf"`` (default, the split M3AE/UMD use): ``trainset.json`` (3,064 QA) and
  ``testset.json`` (451 QA); ``val`` reads ``valset.json`` when present, otherwise ``testset.json``
  (upstream's ``valset.json`` is a copy of ``testset.json``).
* ``layout="osf"``: the original ``VQA_RAD Dataset Public.json`` (2,248 QA); train = phrase types
  ``freeform``/``para``, test (and val) = ``test_freeform``/``test_para``.

Images: ``images/synpic*.jpg`` (or the OSF folder name ``VQA_RAD Image Folder/``).
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from umdbench.api import Record
from umdbench.data.vqa_common import VQADataset, load_json_list

OSF_FILE = "VQA_RAD Dataset Public.json"
IMAGE_DIR_NAMES = ("images", "VQA_RAD Image Folder")
OSF_PHRASES = {
    "train": ("freeform", "para"),
    "val": ("test_freeform", "test_para"),
    "test": ("test_freeform", "test_para"),
}


class VQARad(VQADataset):
    name: ClassVar[str] = "vqa-rad"
    paper_pretrain_corpus: ClassVar[str] = "roco-medicat"  # UMD pre-trains on ROCO + MedICaT
    version: ClassVar[str] = "1"
    root_subdir: ClassVar[str] = "vqa_rad"
    splits: ClassVar[tuple[str, ...]] = ("train", "val", "test")
    # pre-training corpus over the other real datasets (SLAKE + VQA-Med-2019), with every image
    # that also appears in VQA-RAD left out (see umdbench_plugins.datasets.corpus)
    # Pre-train on the other VQA datasets" real images (the paper"s ROCO + MedICaT images are not
    # obtainable offline; select them with --cfg-options pretrain.corpus.type=roco-medicat).
    default_pretrain_corpus: ClassVar[dict] = {
        "type": "corpus",
        "options": {"sources": ["slake", "vqa-med-2019"], "exclude_images_of": ["vqa-rad"]},
    }
    option_defaults = {**VQADataset.option_defaults, "layout": "mevf"}
    option_choices = {**VQADataset.option_choices, "layout": ("mevf", "osf")}

    def image_dir(self) -> Path:
        for name in IMAGE_DIR_NAMES:
            if (self.data_dir / name).is_dir():
                return self.data_dir / name
        return self.data_dir / IMAGE_DIR_NAMES[0]

    def split_file(self, split: str) -> Path:
        d = self.data_dir
        if self.options["layout"] == "osf":
            return d / OSF_FILE
        if split == "val":
            return d / "valset.json" if (d / "valset.json").is_file() else d / "testset.json"
        return d / f"{split}set.json"

    def annotation_files(self) -> list[Path]:
        files = {self.split_file(s) for s in self.splits}
        return sorted(f for f in files if f.is_file())

    def image_dirs(self) -> list[Path]:
        return [self.image_dir()]

    def _read(self, split: str) -> list[Record]:
        path = self.split_file(split)
        rows = load_json_list(path)
        file = self.rel(path)
        images = self.image_dir()
        osf = self.options["layout"] == "osf"
        out = []
        for i, row in enumerate(rows):
            if not isinstance(row, dict):
                self._bad(
                    f"{file}: record #{i}: expected a JSON object, got {type(row).__name__}; fix: remove or repair it"
                )
                continue
            qid = row.get("qid", f"#{i}")
            where = f"#{i} (qid {qid})"
            if osf:
                phrase = row.get("phrase_type")
                known = {p for ps in OSF_PHRASES.values() for p in ps}
                if phrase not in known:
                    self._bad(
                        f"{file}: record {where}: unknown phrase_type {phrase!r} (expected one of {sorted(known)}); "
                        f"fix: correct the record or use layout='mevf'"
                    )
                    continue
                if phrase not in OSF_PHRASES[split]:
                    continue
            missing = [k for k in ("image_name", "question", "answer", "answer_type") if k not in row]
            if missing:
                self._bad(
                    f"{file}: record {where}: missing field(s) {missing}; "
                    "fix: repair the record or re-download the file"
                )
                continue
            rec = self._vqa_record(
                file=file,
                where=where,
                uid=f"{self.name}/{split}/{qid}",
                image=str(images / str(row["image_name"])),
                question=row["question"],
                answer=row["answer"],
                answer_type=row["answer_type"],
                extra={k: row[k] for k in ("qid", "question_type", "phrase_type", "image_organ") if k in row},
            )
            if rec is not None:
                out.append(rec)
        return out
