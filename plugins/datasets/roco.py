"""ROCO (Pelka et al. 2018) radiology image-caption pairs, for image-text retrieval.

Layout under ``<data-root>/roco/`` (the release's ``data/`` folder):
``{train,val,test}/radiology/captions.txt`` (``ROCO_ID<TAB> caption``), ``dlinks.txt`` and the
fetched images ``{split}/radiology/images/<ROCO_ID>.jpg``. The release names the validation
folder ``validation``; ``val`` (M3AE's name) is accepted too.

Evaluation pairs are drawn as upstream (M3AE ``prepro_irtr_roco``): one ``random.Random(42)``
shuffles the caption lines of train, then val, then test (in that order, so val's order depends on
the number of train lines when train is present); captions are whitespace-normalised and kept
with >= 3 words; val and test keep the first 2,000 (option ``eval_size``), train keeps all.
Image i of a split matches text i.
"""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Callable, ClassVar

from umdbench.api import DataError, Record
from umdbench.data.vqa_common import ReleaseDataset, read_text_lines

SPLIT_DIRS = {"train": ("train",), "val": ("val", "validation"), "test": ("test",)}
_PMC = re.compile(r"(PMC\d+)\.tar\.gz")


def split_dir(root: Path, split: str) -> Path:
    """The folder of a split (``validation`` or ``val`` for val); the first name when none exists."""
    for name in SPLIT_DIRS[split]:
        if (root / name).is_dir():
            return root / name
    return root / SPLIT_DIRS[split][0]


def image_dir(split_folder: Path) -> Path:
    for cand in (split_folder / "radiology" / "images", split_folder / "images"):
        if cand.is_dir():
            return cand
    return split_folder / "radiology" / "images"


def normalise_text(text: str) -> str:
    return " ".join(text.split())


def parse_captions(path: Path, bad: Callable[[str], None], file: str) -> list[tuple[int, str, str]]:
    """``(line number, ROCO id, caption)`` per well-formed line of ``captions.txt``, file order."""
    out = []
    for lineno, line in enumerate(read_text_lines(path), 1):
        if not line.strip():
            continue
        parts = line.strip().split("\t")
        if len(parts) != 2 or not parts[0].strip():
            bad(
                f"{file}: line {lineno}: expected 'ROCO_ID<TAB>caption', got {len(parts)} tab-separated field(s); "
                f"fix: repair the line or re-download captions.txt"
            )
            continue
        out.append((lineno, parts[0].strip(), parts[1]))
    return out


def parse_dlinks(path: Path) -> dict[str, str]:
    """MedICaT key ``PMCxxxx_<figure file>`` -> ROCO id, from ``dlinks.txt``."""
    table = {}
    if not path.is_file():
        return table
    for line in read_text_lines(path):
        parts = line.strip().split("\t")
        if len(parts) < 3:
            continue
        m = _PMC.search(parts[1])
        if m:
            table[f"{m.group(1)}_{parts[-1].strip()}"] = parts[0].strip()
    return table


class Roco(ReleaseDataset):
    name: ClassVar[str] = "roco"
    paper_pretrain_corpus: ClassVar[str] = "roco-medicat"  # UMD pre-trains on ROCO + MedICaT
    version: ClassVar[str] = "1"
    task: ClassVar[str] = "retrieval"
    root_subdir: ClassVar[str] = "roco"
    splits: ClassVar[tuple[str, ...]] = ("train", "val", "test")
    default_pretrain_corpus: ClassVar[str] = "roco-medicat"
    option_defaults = {"verify_images": True, "eval_size": 2000, "min_words": 3}

    def captions_file(self, split: str) -> Path:
        return split_dir(self.data_dir, split) / "radiology" / "captions.txt"

    def annotation_files(self) -> list[Path]:
        return [f for f in (self.captions_file(s) for s in self.splits) if f.is_file()]

    def image_dirs(self) -> list[Path]:
        return [image_dir(split_dir(self.data_dir, s)) for s in self.splits]

    def _read(self, split: str) -> list[Record]:
        path = self.captions_file(split)
        if not path.is_file():
            raise DataError(
                f"{path}: file not found; fix: put the ROCO release's {SPLIT_DIRS[split][-1]}/radiology/ "
                f"folder under {self.data_dir} (see docs/datasets.md)"
            )
        rng = random.Random(42)
        for earlier in self.splits[: self.splits.index(split)]:
            # upstream shuffles every split with one generator: replay the earlier shuffles
            prev = self.captions_file(earlier)
            if prev.is_file():
                rng.shuffle(list(range(len(upstream_lines(prev)))))
        lines = upstream_lines(path)
        order = list(range(len(lines)))
        rng.shuffle(order)
        file = self.rel(path)
        images = image_dir(path.parent.parent)
        limit = None if split == "train" else int(self.options["eval_size"])
        out: list[Record] = []
        for i in order:
            line = lines[i]
            parts = line.strip().split("\t")
            if len(parts) != 2 or not parts[0].strip():
                self._bad(
                    f"{file}: line {i + 1}: expected 'ROCO_ID<TAB>caption', got {len(parts)} tab-separated "
                    f"field(s); fix: repair the line or re-download captions.txt"
                )
                continue
            roco_id, caption = parts[0].strip(), normalise_text(parts[1])
            if len(caption.split()) < int(self.options["min_words"]):
                continue  # upstream rule: captions shorter than 3 words are not used
            out.append(
                Record(
                    uid=f"{self.name}/{split}/{roco_id}",
                    image=str(images / f"{roco_id}.jpg"),
                    text=caption,
                    extra={"file": file, "line": i + 1, "roco_id": roco_id},
                )
            )
            if limit is not None and len(out) >= limit:
                break
        return out


def upstream_lines(path: Path) -> list[str]:
    """The lines upstream shuffles: the whole file stripped, then split on newlines."""
    text = "\n".join(read_text_lines(path)).strip()
    return text.split("\n") if text else []
