"""MedICaT (Subramanian et al. 2020) figures and the ROCO + MedICaT pre-training corpus.

``medicat`` (task "pretrain") reads ``<data-root>/medicat/``: the release
``release/s2_full_figures_oa_nonroco_combined_medical_top4_public.jsonl`` + ``release/figures/``
(or that jsonl + ``figures/`` at the top, or the public sample's ``sample.jsonl`` + ``figures/``).
Figure image: ``figures/{pdf_hash}_{fig_uri}``. As upstream (M3AE ``prepro_medicat``): only
``radiology`` figures; texts are ``s2_caption`` and every ``s2orc_references`` entry, whitespace-
normalised, kept with >= 3 words; each text is one record. Splits: ``random.Random(42)`` shuffles the
figure indices; test = the last 1,000, val = the 1,000 before, train = the rest (options
``val_size``/``test_size``; with fewer figures than that, test takes them first, as upstream's
slicing does).

``roco-medicat`` (task "pretrain") is the paper's pre-training corpus: ROCO captions of each split
(``<data-root>/roco``, >= 3 words, all of them) + the MedICaT ROCO inline references when
``medicat/net/nfs2.corp/allennlp/sanjays/roco_files/roco_{split}_references.jsonl`` (or
``medicat/roco_files/...``) exists + the ``medicat`` records above.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Callable, ClassVar

from umdbench.api import DataError, Record
from umdbench.data.vqa_common import ReleaseDataset, read_text_lines

from .roco import image_dir as roco_image_dir
from .roco import normalise_text, parse_captions, parse_dlinks
from .roco import split_dir as roco_split_dir

RELEASE_JSONL = "s2_full_figures_oa_nonroco_combined_medical_top4_public.jsonl"
JSONL_CANDIDATES = (f"release/{RELEASE_JSONL}", RELEASE_JSONL, "sample.jsonl", "sample/sample.jsonl")
ROCO_REF_DIRS = ("net/nfs2.corp/allennlp/sanjays/roco_files", "roco_files")
SPLITS = ("train", "val", "test")


def find_jsonl(root: Path) -> Path:
    for cand in JSONL_CANDIDATES:
        if (root / cand).is_file():
            return root / cand
    raise DataError(
        f"{root}: no MedICaT annotation file found (looked for {', '.join(JSONL_CANDIDATES)}); fix: unpack "
        f"the MedICaT release (or its sample/) into this folder (see docs/datasets.md)"
    )


def split_indices(n: int, val_size: int, test_size: int) -> dict[str, list[int]]:
    """Seed-42 shuffle of ``range(n)``: test = last ``test_size``, val = the ``val_size`` before, train = rest."""
    idx = list(range(n))
    random.Random(42).shuffle(idx)
    n_test = min(test_size, n)
    n_val = min(val_size, n - n_test)
    cut = n - n_test - n_val
    return {"train": idx[:cut], "val": idx[cut : n - n_test], "test": idx[n - n_test :]}


def jsonl_rows(path: Path, file: str, bad: Callable[[str], None]):
    """``(line number, parsed row)`` of a JSON-lines file; blank lines skipped, bad JSON reported."""
    for lineno, line in enumerate(read_text_lines(path), 1):
        if not line.strip():
            continue
        try:
            yield lineno, json.loads(line)
        except json.JSONDecodeError as exc:
            bad(
                f"{file}: line {lineno}: invalid JSON ({exc.msg} at column {exc.colno}); fix: repair or remove the line"
            )


def read_medicat(
    root: Path,
    split: str,
    bad: Callable[[str], None],
    *,
    min_words: int,
    val_size: int,
    test_size: int,
    rel: Callable[[Path], str],
    uid_prefix: str,
) -> list[Record]:
    path = find_jsonl(root)
    file = rel(path)
    figures = path.parent / "figures"
    figs = []
    for lineno, row in jsonl_rows(path, file, bad):
        if not isinstance(row, dict) or not row.get("pdf_hash") or not row.get("fig_uri"):
            bad(f"{file}: line {lineno}: record lacks pdf_hash/fig_uri; fix: repair or remove the line")
            continue
        if row.get("radiology"):
            figs.append((lineno, row))
    out = []
    for i in split_indices(len(figs), val_size, test_size)[split]:
        lineno, row = figs[i]
        texts = []
        caption = row.get("s2_caption")
        if isinstance(caption, str) and caption:
            texts.append(("caption", caption))
        refs = row.get("s2orc_references")
        if refs is not None and not isinstance(refs, list):
            bad(
                f"{file}: line {lineno}: s2orc_references must be a list or null, got {type(refs).__name__}; "
                f"fix: repair the record"
            )
            continue
        texts.extend(("reference", r) for r in (refs or []) if isinstance(r, str))
        key = f"{row['pdf_hash']}_{row['fig_uri']}"
        k = 0
        for kind, text in texts:
            text = normalise_text(text)
            if len(text.split()) < min_words:
                continue
            out.append(
                Record(
                    uid=f"{uid_prefix}/{split}/{key}/{k}",
                    image=str(figures / key),
                    text=text,
                    extra={"file": file, "line": lineno, "kind": kind, "source": "medicat"},
                )
            )
            k += 1
    return out


class Medicat(ReleaseDataset):
    name: ClassVar[str] = "medicat"
    version: ClassVar[str] = "1"
    task: ClassVar[str] = "pretrain"
    root_subdir: ClassVar[str] = "medicat"
    splits: ClassVar[tuple[str, ...]] = SPLITS
    option_defaults = {"verify_images": True, "min_words": 3, "val_size": 1000, "test_size": 1000}

    def annotation_files(self) -> list[Path]:
        return [find_jsonl(self.data_dir)]

    def image_dirs(self) -> list[Path]:
        return [find_jsonl(self.data_dir).parent / "figures"]

    def _read(self, split: str) -> list[Record]:
        o = self.options
        return read_medicat(
            self.data_dir,
            split,
            self._bad,
            min_words=int(o["min_words"]),
            val_size=int(o["val_size"]),
            test_size=int(o["test_size"]),
            rel=self.rel,
            uid_prefix=self.name,
        )


class RocoMedicat(ReleaseDataset):
    """ROCO captions (+ MedICaT's ROCO inline references) + MedICaT radiology figures."""

    name: ClassVar[str] = "roco-medicat"
    version: ClassVar[str] = "1"
    task: ClassVar[str] = "pretrain"
    root_subdir: ClassVar[str | None] = None  # reads <data-root>/roco and <data-root>/medicat
    splits: ClassVar[tuple[str, ...]] = SPLITS
    option_defaults = {
        "verify_images": True,
        "min_words": 3,
        "val_size": 1000,
        "test_size": 1000,
        "roco_dir": "roco",
        "medicat_dir": "medicat",
        "use_roco": True,
        "use_medicat": True,
    }

    @property
    def roco_root(self) -> Path:
        return self.data_dir / self.options["roco_dir"]

    @property
    def medicat_root(self) -> Path:
        return self.data_dir / self.options["medicat_dir"]

    def _require(self, folder: Path, what: str) -> Path:
        if not folder.is_dir():
            raise DataError(
                f"roco-medicat: {what} folder {folder} does not exist; fix: put it there, point the option "
                f"{what}_dir at it, or set use_{what}=False to build the corpus without it"
            )
        return folder

    def _ref_file(self, split: str) -> Path | None:
        for d in ROCO_REF_DIRS:
            name = f"roco_{'val' if split == 'val' else split}_references.jsonl"
            if (self.medicat_root / d / name).is_file():
                return self.medicat_root / d / name
        return None

    def annotation_files(self) -> list[Path]:
        files = []
        if self.options["use_roco"]:
            root = self._require(self.roco_root, "roco")
            for s in self.splits:
                d = roco_split_dir(root, s) / "radiology"
                files += [f for f in (d / "captions.txt", d / "dlinks.txt") if f.is_file()]
        if self.options["use_medicat"]:
            files.append(find_jsonl(self._require(self.medicat_root, "medicat")))
            files += [f for f in (self._ref_file(s) for s in self.splits) if f is not None]
        return files

    def image_dirs(self) -> list[Path]:
        dirs = []
        if self.options["use_roco"]:
            dirs += [roco_image_dir(roco_split_dir(self.roco_root, s)) for s in self.splits]
        if self.options["use_medicat"]:
            dirs.append(find_jsonl(self.medicat_root).parent / "figures")
        return dirs

    def _read(self, split: str) -> list[Record]:
        o = self.options
        min_words = int(o["min_words"])
        out: list[Record] = []
        if o["use_roco"]:
            root = self._require(self.roco_root, "roco")
            sdir = roco_split_dir(root, split)
            images = roco_image_dir(sdir)
            ref = self._ref_file(split) if o["use_medicat"] and self.medicat_root.is_dir() else None
            if ref is not None:
                out += self._read_roco_refs(ref, sdir, images, split, min_words)
            cap = sdir / "radiology" / "captions.txt"
            if not cap.is_file():
                raise DataError(
                    f"{cap}: file not found; fix: put the ROCO release's radiology/ folder of split "
                    f"{split!r} there, or set use_roco=False"
                )
            file = self.rel(cap)
            for lineno, roco_id, caption in parse_captions(cap, self._bad, file):
                caption = normalise_text(caption)
                if len(caption.split()) < min_words:
                    continue
                out.append(
                    Record(
                        uid=f"{self.name}/{split}/roco/{roco_id}",
                        image=str(images / f"{roco_id}.jpg"),
                        text=caption,
                        extra={"file": file, "line": lineno, "source": "roco", "kind": "caption"},
                    )
                )
        if o["use_medicat"]:
            out += read_medicat(
                self._require(self.medicat_root, "medicat"),
                split,
                self._bad,
                min_words=min_words,
                val_size=int(o["val_size"]),
                test_size=int(o["test_size"]),
                rel=self.rel,
                uid_prefix=f"{self.name}/medicat",
            )
        return out

    def _read_roco_refs(self, path: Path, sdir: Path, images: Path, split: str, min_words: int) -> list[Record]:
        dlinks = parse_dlinks(sdir / "radiology" / "dlinks.txt")
        file = self.rel(path)
        out = []
        for lineno, row in jsonl_rows(path, file, self._bad):
            key = row.get("roco_image_id") if isinstance(row, dict) else None
            if key not in dlinks:
                self._bad(
                    f"{file}: line {lineno}: roco_image_id {key!r} is not in {split}/radiology/dlinks.txt; "
                    f"fix: use the dlinks.txt of the same ROCO release"
                )
                continue
            roco_id = dlinks[key]
            k = 0
            for text in row.get("gorc_references") or []:
                text = normalise_text(str(text))
                if len(text.split()) < min_words:
                    continue
                out.append(
                    Record(
                        uid=f"{self.name}/{split}/roco-ref/{roco_id}/{k}",
                        image=str(images / f"{roco_id}.jpg"),
                        text=text,
                        extra={"file": file, "line": lineno, "source": "roco", "kind": "reference"},
                    )
                )
                k += 1
        return out
