"""The datasets a process reads and the checks a split passes before anything trains on it.

:class:`DataCatalog` builds each dataset plugin instance once per (type, root, options) and hands
out the records of a split once they are known to be usable (:meth:`DataCatalog.checked_records`).
:func:`check_cell_data` and :func:`missing_data` run those checks over every split a planned cell
reads, before its first stage trains: a corrupt or absent test image stops a run in seconds, not
after hours of training. :func:`skipped_counts` reports what ``on_error: skip`` left out.

This layer sits below the plugin registries and the planner: it takes the dataset registry
(:class:`DatasetRegistries`) and, for its on-disk cache, the digest of a plugin's code as arguments.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterable, Protocol

from umdbench.util import atomic_write_json, config_hash

__all__ = [
    "DataCatalog",
    "DatasetRegistries",
    "DatasetRegistry",
    "PLANNING_CACHE_MAX",
    "ReadsData",
    "check_cell_data",
    "missing_data",
    "skipped_counts",
]

log = logging.getLogger("umdbench.data")

# entries kept in the on-disk planning cache (DataCatalog(cache_file=...)), oldest dropped first
PLANNING_CACHE_MAX = 512


class DatasetRegistry(Protocol):
    """What the catalog uses of the dataset registry (:class:`umdbench.plugin.registry.Registry`)."""

    def get(self, key: str) -> Any: ...

    def guard(self, name: str, doing: str) -> ContextManager: ...


class DatasetRegistries(Protocol):
    """The registries the catalog reads: the dataset one (:class:`umdbench.plugin.registry.Registries`)."""

    dataset: DatasetRegistry


class ReadsData(Protocol):
    """A planned stage as the checks see it: the data config it reads (type, root, options,
    on_error, split)."""

    data: dict


class DataCatalog:
    """Dataset plugin instances, built once per (type, root, options), and the records of each
    split after the checks a run needs (:meth:`checked_records`)."""

    def __init__(
        self,
        registries: DatasetRegistries,
        cache_file: str | Path | None = None,
        code_digest: Callable[[str], str] | None = None,
    ):
        self.registries = registries
        # planning results kept across processes (``--dry-run`` and sweeps with a warm work dir):
        # which images of a split are missing, keyed by the data's fingerprint (annotation bytes +
        # image listing) and the plugin's code, so any change to either recomputes it. The code
        # digest comes from the caller (umdbench.plan.codekey.modules_digest): this layer is below it
        if cache_file is not None and code_digest is None:
            raise ValueError("DataCatalog(cache_file=...) needs code_digest: a cache not keyed by code goes stale")
        self.cache_path = Path(cache_file) if cache_file is not None else None
        self.code_digest = code_digest
        self._disk: dict | None = None
        self._cache: dict[str, object] = {}
        self._missing: dict[str, tuple[list[str], int]] = {}
        self._checked: dict[str, list] = {}
        self._image_problems: dict[tuple[str, int | None], str | None] = {}

    @staticmethod
    def _key(data_cfg: dict) -> str:
        return config_hash({k: data_cfg.get(k) for k in ("type", "root", "options")}) + data_cfg.get(
            "on_error", "raise"
        )

    def get(self, data_cfg: dict):
        key = self._key(data_cfg)
        if key not in self._cache:
            cls = self.registries.dataset.get(data_cfg["type"])
            with self.registries.dataset.guard(data_cfg["type"], f"reading its options {data_cfg.get('options', {})}"):
                self._cache[key] = cls(
                    root=data_cfg.get("root"), on_error=data_cfg.get("on_error", "raise"), **data_cfg.get("options", {})
                )
        return self._cache[key]

    def fingerprint(self, data_cfg: dict) -> str:
        return self.get(data_cfg).fingerprint()

    def missing_images(self, data_cfg: dict, split: str) -> tuple[list[str], int]:
        """``(missing image files, records looked at)`` of one split: files its records name that do
        not exist. Empty for ``on_error: skip`` (those records are dropped, not fatal) and for a
        dataset that reads no files (``needs_root = False``: generated data, whose records are not
        made here only to find no file among them)."""
        if data_cfg.get("on_error", "raise") == "skip" or not type(self.get(data_cfg)).needs_root:
            return [], 0
        key = config_hash({k: data_cfg.get(k) for k in ("type", "root", "options")}) + split
        if key not in self._missing:
            disk_key = self._disk_key(data_cfg, split) if self.cache_path is not None else None
            hit = self._disk_cache().get(disk_key) if disk_key else None
            if hit is not None:
                self._missing[key] = ([], int(hit))
                return self._missing[key]
            records = self.get(data_cfg).records(split)
            paths = {str(r.image) for r in records if isinstance(r.image, (str, Path))}
            self._missing[key] = (sorted(p for p in paths if not Path(p).is_file()), len(records))
            if disk_key and not self._missing[key][0]:
                # only "nothing missing" is remembered: should it go stale (a plugin whose
                # fingerprint skips its images), run_cell's data check still stops the run before
                # training; a split with missing images is looked at afresh every time
                self._remember(disk_key, len(records))
        return self._missing[key]

    # -- the on-disk planning cache ----------------------------------------------------------
    def _disk_key(self, data_cfg: dict, split: str) -> str:
        cls = self.registries.dataset.get(data_cfg["type"])
        return config_hash(
            {
                "what": "missing_images",
                "split": split,
                "fingerprint": self.fingerprint(data_cfg),
                "data": {k: data_cfg.get(k) for k in ("type", "root", "options")},
                "code": self.code_digest(cls.__module__),
            }
        )

    def _disk_cache(self) -> dict:
        if self._disk is None:
            self._disk = {}
            if self.cache_path is not None and self.cache_path.is_file():
                try:
                    loaded = json.loads(self.cache_path.read_text())
                    self._disk = loaded if isinstance(loaded, dict) else {}
                except (OSError, ValueError):
                    self._disk = {}  # unreadable: recompute (it is only a cache)
        return self._disk

    def _remember(self, key: str, value) -> None:
        cache = self._disk_cache()
        cache[key] = value
        # only into an existing work dir: a dry run on a new one writes nothing
        if self.cache_path is None or not self.cache_path.parent.is_dir():
            return
        if len(cache) > PLANNING_CACHE_MAX:  # oldest first (dicts keep insertion order)
            for old in list(cache)[: len(cache) - PLANNING_CACHE_MAX]:
                del cache[old]
        try:
            atomic_write_json(self.cache_path, cache)
        except OSError:
            pass  # a read-only work dir plans without the cache

    def checked_records(
        self, data_cfg: dict, split: str, image_size: int | None = None, cache_dir: Path | None = None
    ) -> list:
        """The records of a split once it is known to be usable: not empty, unique record ids,
        every image inside the dataset's folder and decodable (through the image cache at
        ``image_size``, which training then reads; without a size, a full decode). With
        ``on_error: skip`` records whose image is missing or corrupt are dropped and added to the
        plugin's ``skipped``; otherwise the first problem raises :class:`DataError` naming the
        file, the record and the fix. Checked once per process and split."""
        from umdbench.api import DataError

        key = self._key(data_cfg) + split
        if key in self._checked:
            return list(self._checked[key])
        name, dataset = data_cfg["type"], self.get(data_cfg)
        skip = data_cfg.get("on_error", "raise") == "skip"
        records = dataset.records(split)
        look = f"`umdbench data check {name}` shows what it found"
        if not records:
            where = data_cfg.get("root") or "generated data"
            raise DataError(
                f"dataset {name!r} has no records in split {split!r} (under {where}); "
                f"fix: restore its annotation file or choose another split; {look}."
            )
        seen: dict[str, object] = {}
        for r in records:
            if r.uid in seen:
                raise DataError(
                    f"dataset {name!r} split {split!r}: record id {r.uid!r} occurs twice "
                    f"({_where(seen[r.uid])} and {_where(r)}); fix: remove the duplicate from the "
                    f"annotation file (record ids must be unique) or re-download the release; {look}."
                )
            seen[r.uid] = r
        root = os.path.abspath(data_cfg["root"]) if data_cfg.get("root") else None
        loader = None
        if image_size:
            from umdbench.data.images import ImageLoader

            loader = ImageLoader(int(image_size), cache_dir)
        kept, dropped = [], 0
        for r in records:
            problem = self._image_problem(r.image, root, loader) if isinstance(r.image, (str, Path)) else None
            if problem is None:
                kept.append(r)
                continue
            message = f"{_where(r)} of dataset {name!r} split {split!r}: image {r.image} {problem}"
            if not skip:
                raise DataError(
                    f"{message}; fix: restore or re-download that file (`umdbench data check {name}` "
                    f"lists every bad image), or leave such records out with --cfg-options "
                    f"dataset.on_error=skip. Nothing was trained."
                )
            dataset.skipped.append(message)
            dropped += 1
        if dropped:
            log.warning(
                "dataset %s split %s: %d record(s) skipped for a missing or corrupt image, %d kept",
                name,
                split,
                dropped,
                len(kept),
            )
        if not kept:
            raise DataError(
                f"dataset {name!r} split {split!r}: every record was skipped (on_error=skip), the "
                f"first for: {dataset.skipped[-dropped]}; fix: restore the images; {look}."
            )
        self._checked[key] = kept
        return list(kept)

    def _image_problem(self, image, root: str | None, loader) -> str | None:
        path = os.path.abspath(str(image))
        # normpath, not resolve: a symlinked dataset folder is fine, a '../' out of it is not
        if root is not None and not os.path.normpath(path).startswith(os.path.normpath(root) + os.sep):
            return f"lies outside the dataset folder {root}"
        memo = (path, loader.image_size if loader else None)
        if memo not in self._image_problems:
            if loader is not None:
                self._image_problems[memo] = loader.check(path)
            else:
                from umdbench.data.check import verify_image

                reason = verify_image(path, deep=True)
                self._image_problems[memo] = (
                    None if reason is None else ("does not exist" if reason == "missing" else f"is {reason}")
                )
        return self._image_problems[memo]

    def skipped(self, data_cfg: dict) -> int:
        """Records the plugin has skipped so far (malformed fields, missing or corrupt images)."""
        return len(getattr(self.get(data_cfg), "skipped", []) or [])


def _where(record) -> str:
    file = record.extra.get("file") if isinstance(getattr(record, "extra", None), dict) else None
    return f"record {record.uid}" + (f" ({file})" if file else "")


def check_cell_data(
    stages: Iterable[ReadsData], catalog: DataCatalog, run_config: dict, cache_dir: Path | None = None
) -> None:
    """Check every split a planned cell reads (pre-training corpus, training split, evaluation
    split) before its first stage trains: a corrupt test image must stop the run in seconds, not
    after hours of training. Raises :class:`DataError` (see :meth:`DataCatalog.checked_records`)."""
    size = (run_config.get("model") or {}).get("image_size")
    cache = cache_dir if (run_config.get("data") or {}).get("image_cache", True) else None
    done = set()
    for stage in stages:
        key = (DataCatalog._key(stage.data), stage.data["split"])
        if key not in done:
            done.add(key)
            catalog.checked_records(stage.data, stage.data["split"], size if isinstance(size, int) else None, cache)


def skipped_counts(stages: Iterable[ReadsData], catalog: DataCatalog) -> dict[str, int]:
    """``{dataset type: records skipped}`` over the data a cell read (only types that skipped any)."""
    out: dict[str, int] = {}
    for stage in stages:
        n = catalog.skipped(stage.data)
        if n:
            out[stage.data["type"]] = n
    return out


def missing_data(stages: Iterable[ReadsData], catalog: DataCatalog) -> str | None:
    """Why a planned cell cannot run to the end for want of image files, or None: checked before
    any training so that a cell whose test images are absent is not trained for hours first."""
    for stage in stages:
        data = stage.data
        missing, total = catalog.missing_images(data, data["split"])
        if missing:
            return (
                f"{len(missing)} image file(s) of {data['type']}:{data['split']} ({total} records) do not exist, "
                f"e.g. {missing[0]}; fix: restore them (`umdbench data check {data['type']}` lists each one) "
                f"or leave {data['type']} out with --datasets"
            )
    return None
