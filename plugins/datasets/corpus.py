"""``corpus``: a pre-training corpus built from other datasets' (image, text) pairs.

Every record of every source becomes one pre-training pair (nothing is deduplicated):
VQA records give ``"<question> <answer>"`` (the answer as written in the release), captions and
classification records give their caption. Used as VQA-RAD's default pre-training corpus so that
pre-training runs on real medical images here (SLAKE, VQA-Med-2019) while VQA-RAD is evaluated.

Options:

* ``sources`` (default ``["slake", "vqa-med-2019"]``): dataset names, each read from
  ``<data-root>/<its root_subdir>``;
* ``source_options``: ``{name: {option: value}}`` passed to a source;
* ``exclude_images_of`` (default ``["vqa-rad"]``): leave out every record whose image file name
  (e.g. ``synpic12345.jpg``) also occurs in these datasets -- 38 VQA-Med-2019 train/val images
  and 4 test images are VQA-RAD images (both come from MedPix). Left-out records are counted in
  ``self.skipped``; an empty list turns this off. File names say nothing for SLAKE, whose every
  image is ``source.jpg``, and miss a copy under another name (one MedPix image is in VQA-Med-2019
  as both ``synpic25639.jpg`` and ``synpic25634.jpg``): see the next option;
* ``exclude_near_duplicates_of`` (default ``[]``): leave out every record whose image is an exact or
  near duplicate of an image of these datasets (any split: the test split is what matters, and a
  copy may evaluate on another, as VQA-Med-2019's fallback to val does): perceptual-hash distance at
  most ``near_duplicate_threshold`` (default None = :data:`umdbench.data.overlap.DEFAULT_THRESHOLD`,
  10 of 128 bits; ``umdbench overlap`` lists what it finds). Each image is hashed once per content
  (content cache). Left-out records are counted in ``self.skipped`` and listed in ``self.left_out``.
  The paper pre-trains on ROCO + MedICaT and removes nothing; a run on this corpus records its
  options among its deviations (``pre-training corpus 'corpus' {...} instead of the paper's``);
* ``source_on_error`` (default ``"skip"``): how sources treat records whose image is missing
  (VQA-Med-2019 train is partial in the shared copy); skipped records are listed in ``self.skipped``
  and logged per split. Use ``"raise"`` to demand complete sources.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, ClassVar

from umdbench.api import CheckReport, DataError, DatasetPlugin, Record
from umdbench.util import DATA_ROOT_ENV

log = logging.getLogger("umdbench.data")


def dataset_class(name: str):
    """A source dataset's plugin class, looked up in the registry (unknown names: "did you mean")."""
    from umdbench.plugin import get_registries

    return get_registries().dataset.get(name)


class Corpus(DatasetPlugin):
    name: ClassVar[str] = "corpus"
    version: ClassVar[str] = "1"
    task: ClassVar[str] = "pretrain"
    root_subdir: ClassVar[str | None] = None  # the data root; each source uses its own subfolder
    splits: ClassVar[tuple[str, ...]] = ("train", "val", "test")
    option_defaults: ClassVar[dict[str, Any]] = {
        "sources": ["slake", "vqa-med-2019"],
        "source_options": {},
        "exclude_images_of": ["vqa-rad"],
        "source_on_error": "skip",
        "exclude_near_duplicates_of": [],
        "near_duplicate_threshold": None,
    }
    # options added after stage keys were first computed: left out of the fingerprint at their
    # defaults, so a corpus that does not use them keeps its key
    _LATER_OPTIONS: ClassVar[dict[str, Any]] = {"exclude_near_duplicates_of": [], "near_duplicate_threshold": None}

    def __init__(self, root: str | Path | None = None, on_error: str = "raise", **options: Any):
        unknown = sorted(set(options) - set(self.option_defaults))
        if unknown:
            raise ValueError(f"dataset 'corpus': unknown option(s) {unknown}; known: {sorted(self.option_defaults)}")
        merged = {**self.option_defaults, **options}
        if merged["source_on_error"] not in ("raise", "skip"):
            raise ValueError("dataset 'corpus': source_on_error must be 'raise' or 'skip'")
        if isinstance(merged["sources"], str):
            merged["sources"] = [merged["sources"]]
        for key in ("exclude_images_of", "exclude_near_duplicates_of"):
            if isinstance(merged[key], str):
                merged[key] = [merged[key]]
        threshold = merged["near_duplicate_threshold"]
        if threshold is not None and (
            isinstance(threshold, bool) or not isinstance(threshold, int) or not 0 <= threshold <= 128
        ):
            raise ValueError(
                f"dataset 'corpus': near_duplicate_threshold={threshold!r} must be an integer in 0..128 "
                f"(Hamming distance between 128-bit hashes) or null for the default"
            )
        if not merged["sources"]:
            raise ValueError("dataset 'corpus': option sources is empty")
        super().__init__(root, on_error, **merged)
        self._sources: dict[str, DatasetPlugin] | None = None
        self._excluded: set[str] | None = None
        self._near: list[int] | None = None
        self._hasher = None
        self._records: dict[str, list[Record]] = {}
        # split -> option -> the records that option left out (corpus-shaped, ``extra["source"]`` set)
        self.left_out: dict[str, dict[str, list[Record]]] = {}
        self._fingerprint: str | None = None

    # -- helpers ------------------------------------------------------------------------------
    def _data_root(self) -> Path:
        if self.root is None or not self.root.is_dir():
            raise DataError(
                f"dataset 'corpus': data root {self.root} does not exist; fix: pass --data-root DIR (the "
                f"folder holding {', '.join(self.options['sources'])}) or set {DATA_ROOT_ENV}=DIR"
            )
        return self.root

    def _make(self, name: str, on_error: str, extra: dict | None = None) -> DatasetPlugin:
        cls = dataset_class(name)
        root = self._data_root() / cls.root_subdir if cls.root_subdir else self._data_root()
        if cls.needs_root and not root.is_dir():
            raise DataError(
                f"corpus: source {name!r} expects its data in {root}, which does not exist; fix: put "
                f"the dataset there or drop it from the corpus options (sources / exclude_images_of)"
            )
        opts = dict(self.options["source_options"].get(name, {}))
        opts.update(extra or {})
        return cls(root=root if cls.needs_root else None, on_error=on_error, **opts)

    def sources(self) -> dict[str, DatasetPlugin]:
        if self._sources is None:
            self._sources = {n: self._make(n, self.options["source_on_error"]) for n in self.options["sources"]}
        return self._sources

    def excluded_names(self) -> set[str]:
        """Image file names of the datasets in ``exclude_images_of`` (all their splits)."""
        if self._excluded is None:
            names: set[str] = set()
            for n in self.options["exclude_images_of"]:
                src = self._make(n, "skip", {"verify_images": False} if n != "corpus" else None)
                for split in src.splits:
                    reader = getattr(src, "raw_records", src.records)
                    names.update(os.path.basename(r.image) for r in reader(split) if isinstance(r.image, str))
            self._excluded = names
        return self._excluded

    def threshold(self) -> int:
        from umdbench.data.overlap import DEFAULT_THRESHOLD

        t = self.options["near_duplicate_threshold"]
        return DEFAULT_THRESHOLD if t is None else int(t)

    def near_duplicate_hashes(self) -> list[int]:
        """Perceptual hashes of every image of the datasets in ``exclude_near_duplicates_of`` (all
        splits; a listed image missing from this copy cannot be compared and is passed over)."""
        if self._near is None:
            from umdbench.data.overlap import Hasher, split_items

            self._hasher = self._hasher or Hasher()
            hashes: set[int] = set()
            for n in self.options["exclude_near_duplicates_of"]:
                src = self._make(n, "skip", {"verify_images": False} if n != "corpus" else None)
                reader = getattr(src, "raw_records", src.records)
                for split in src.splits:
                    recs = [r for r in reader(split) if isinstance(r.image, str) and os.path.isfile(r.image)]
                    items = split_items(src, recs, self._hasher)
                    hashes.update(i.hash for i in items.items.values() if i.hash is not None)
            self._hasher.save()
            self._near = sorted(hashes)
        return self._near

    def _is_near_duplicate(self, record: Record, source: DatasetPlugin) -> bool:
        near = self.near_duplicate_hashes()
        if not near or not isinstance(record.image, str):
            return False
        from umdbench.data.overlap import nearest

        try:
            _, value = self._hasher.image_file(record.image, source.root or os.path.dirname(record.image))
        except DataError:
            return False  # kept: the data checks before training name an unreadable image
        dist, _, _ = nearest([value], near, self.threshold())
        return int(dist[0]) <= self.threshold()

    @staticmethod
    def pair_text(r: Record) -> str:
        if r.answer is not None:
            answer = r.extra.get("raw_answer", r.answer)
            return f"{r.text} {answer}".strip()
        return r.text

    # -- DatasetPlugin ------------------------------------------------------------------------
    def records(self, split: str) -> list[Record]:
        if split not in self.splits:
            raise ValueError(f"dataset 'corpus' has no split {split!r}; its splits are {list(self.splits)}")
        if split not in self._records:
            excluded = self.excluded_names()
            out: list[Record] = []
            n_excl = 0
            left_out: dict[str, list[Record]] = {}
            near_of = self.options["exclude_near_duplicates_of"]
            for name, src in self.sources().items():
                if split not in src.splits:
                    continue
                before = len(src.skipped)
                recs = src.records(split)
                self.skipped.extend(f"[{name}] {m}" for m in src.skipped[before:])
                for r in recs:
                    pair = Record(
                        uid=f"corpus/{r.uid}",
                        image=r.image,
                        text=self.pair_text(r),
                        extra={"source": name, "source_uid": r.uid},
                    )
                    if isinstance(r.image, str) and os.path.basename(r.image) in excluded:
                        n_excl += 1
                        left_out.setdefault("exclude_images_of", []).append(pair)
                        self.skipped.append(
                            f"[{name}] record {r.uid}: image {os.path.basename(r.image)} also belongs "
                            f"to {self.options['exclude_images_of']} (left out to avoid leakage)"
                        )
                        continue
                    if near_of and self._is_near_duplicate(r, src):
                        left_out.setdefault("exclude_near_duplicates_of", []).append(pair)
                        self.skipped.append(
                            f"[{name}] record {r.uid}: image {os.path.basename(r.image)} is a near "
                            f"duplicate (distance <= {self.threshold()}) of an image of {near_of} "
                            f"(left out to avoid leakage)"
                        )
                        continue
                    out.append(pair)
            if n_excl:
                log.warning(
                    "corpus split %s: %d record(s) left out because their image belongs to %s",
                    split,
                    n_excl,
                    self.options["exclude_images_of"],
                )
            if left_out.get("exclude_near_duplicates_of"):
                log.warning(
                    "corpus split %s: %d record(s) left out as near duplicates of images of %s",
                    split,
                    len(left_out["exclude_near_duplicates_of"]),
                    near_of,
                )
            if self._hasher is not None:
                self._hasher.save()
            self.left_out[split] = left_out
            self._records[split] = out
        return list(self._records[split])

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            options = {
                k: v for k, v in self.options.items() if not (k in self._LATER_OPTIONS and v == self._LATER_OPTIONS[k])
            }
            h = hashlib.sha256(
                json.dumps(
                    {"name": self.name, "version": self.version, "options": options}, sort_keys=True, default=str
                ).encode()
            )
            for name, src in self.sources().items():
                h.update(f"\0{name}\0{src.fingerprint()}".encode())
            for n in self.options["exclude_images_of"]:
                h.update(f"\0exclude\0{n}\0{self._make(n, 'skip').fingerprint()}".encode())
            if self.options["exclude_near_duplicates_of"]:
                from umdbench.data.overlap import HASH_NAME

                h.update(f"\0near\0{HASH_NAME}\0{self.threshold()}".encode())
                for n in self.options["exclude_near_duplicates_of"]:
                    h.update(f"\0near\0{n}\0{self._make(n, 'skip').fingerprint()}".encode())
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    def deviations(self) -> list[str]:
        if not self.options["exclude_near_duplicates_of"]:
            return []
        return [
            f"corpus: records whose image is within Hamming distance {self.threshold()} (of 128-bit perceptual "
            f"hashes) of an image of {', '.join(self.options['exclude_near_duplicates_of'])} are left out "
            f"(exclude_near_duplicates_of); the paper removes nothing from its pre-training corpus"
        ]

    def check(self, deep: bool = True) -> CheckReport:
        report = CheckReport(dataset=self.name, root=str(self.root) if self.root is not None else None)
        try:
            sources = self.sources()
        except DataError as exc:
            report.problems.append(str(exc))
            return report
        for name, src in sources.items():
            sub = src.check(deep=deep) if "deep" in src.check.__code__.co_varnames else src.check()
            for split, n in sub.counts.items():
                report.counts[split] = report.counts.get(split, 0) + n
            report.checksums.update({f"{name}/{k}": v for k, v in sub.checksums.items()})
            report.problems.extend(f"[{name}] {p}" for p in sub.problems)
        return report
