"""``umdbench overlap``: the test images each pre-training corpus also holds (:mod:`umdbench.data.overlap`).

With a work dir that has a results store, it audits what the store's rows ran: each row's
pre-training corpus (the ``train`` split pre-training reads) against the split it was evaluated on,
and flags the cells whose pre-training saw a test image. Without one, it audits every downstream
dataset's test split (with the options the registered suites give it) against every dataset's
default pre-training corpus. Every corpus is compared with every test split of the same kind (2-D
images, 3-D studies); the report ``overlap.json`` goes into the work dir, where ``umdbench
leaderboard`` prints one line under each board's dataset from it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from umdbench.errors import ConfigError, UmdbenchError
from umdbench.util import DATA_ROOT_ENV, DATA_ROOT_MARK


def add_subcommands(sub, common_parent_parser) -> None:
    p = sub.add_parser(
        "overlap",
        parents=[common_parent_parser],
        help="test images (and 3-D studies) that a pre-training corpus also holds",
        description="Find the test images each pre-training corpus also holds: exact duplicates (same file content) "
        "and near duplicates (perceptual hash within --threshold bits), and for 3-D studies the same "
        "content or the same declared subject. With a work dir holding a results store, it audits the "
        "corpora and test splits its rows ran and flags the cells whose pre-training saw a test item; "
        "the JSON report it writes there adds a line under each board (`umdbench leaderboard`).",
    )
    p.add_argument("--data-root", metavar="DIR", help=f"folder holding the datasets (or env {DATA_ROOT_ENV})")
    p.add_argument(
        "--work-dir",
        default="work_dirs",
        metavar="DIR",
        help="work dir whose results store says what to audit; the report goes here (default work_dirs)",
    )
    p.add_argument(
        "--threshold",
        type=int,
        metavar="N",
        help="largest Hamming distance (of 128 bits) that counts as a near duplicate (default 10, "
        "umdbench.data.overlap.DEFAULT_THRESHOLD; docs/datasets.md says how it was chosen)",
    )
    p.add_argument("--datasets", metavar="A,B", help="only these datasets (test splits or corpora)")
    p.add_argument("--out", metavar="FILE", help="write the JSON report here instead of WORK_DIR/overlap.json")
    p.add_argument(
        "--subjects", metavar="FILE", help='declared subject of 3-D studies: JSON {"dataset": {"study id": "subject"}}'
    )
    p.add_argument("--examples", type=int, default=3, metavar="K", help="shared items printed per pair (default 3)")
    p.set_defaults(handler=cmd_overlap)


@dataclass
class Side:
    """A corpus (the split pre-training reads) or a test split, as runs configure it."""

    role: str  # "corpus" | "test"
    data: dict  # type, root (as stored: <data-root>/...), options, on_error
    split: str
    dataset: str
    row_fingerprints: set = field(default_factory=set)
    rows: int = 0
    id: str = ""
    fingerprint: str | None = None
    items: Any = None
    left_out: dict = field(default_factory=dict)
    plugin: Any = None
    unavailable: str | None = None
    default_corpus: tuple | None = None  # test side, no store: the key of its dataset's default corpus

    @property
    def key(self) -> tuple:
        from umdbench.data.overlap import data_key

        return self.role, data_key(self.data), self.data.get("root"), self.split

    @property
    def label(self) -> str:
        from umdbench.data.overlap import describe_data, describe_options

        if self.role == "corpus":
            return describe_data(self.data)
        opts = describe_options(self.data.get("options"))
        return f"{self.dataset} {self.split}" + (f" ({opts})" if opts else "")


def cmd_overlap(args) -> int:
    from umdbench.data.overlap import DEFAULT_THRESHOLD, Hasher
    from umdbench.plugin import get_registries
    from umdbench.run import layout
    from umdbench.util import data_root

    if args.threshold is None:
        args.threshold = DEFAULT_THRESHOLD
    if not 0 <= args.threshold <= 128:
        raise ConfigError(
            f"--threshold {args.threshold}: a Hamming distance between 128-bit hashes is 0..128; "
            f"fix: pass a number in that range (the default, 10, is explained in docs/datasets.md)."
        )
    registries = get_registries(tuple(args.plugin_path))
    selected = [d.strip() for d in args.datasets.split(",") if d.strip()] if args.datasets else []
    for name in selected:
        registries.dataset.get(name)  # an unknown name: one paragraph with "did you mean"
    declared = _subjects(args.subjects)
    store_path = layout.store_path(args.work_dir)
    root = data_root(args.data_root)
    rows = []
    if store_path.is_file():
        from umdbench.results.store import ResultsStore

        rows = ResultsStore(store_path).rows()
    if rows:
        corpora, tests, cells = _sides_of_rows(rows, selected)
    else:
        corpora, tests, cells = _default_sides(registries, selected)
    if not tests:
        where = (
            f"no row of {store_path} evaluates or pre-trains on {', '.join(selected)}"
            if rows
            else f"no downstream dataset with a pre-training corpus {'was named' if selected else 'is registered'}"
        )
        raise UmdbenchError(
            f"umdbench overlap: nothing to audit: {where}; fix: pass --datasets with a downstream "
            f"dataset (`umdbench list --kind dataset`), or --work-dir DIR of the runs to audit."
        )
    hasher = Hasher()
    for i, side in enumerate(corpora):
        side.id = f"c{i}"
        _load(side, registries, root, hasher, declared)
    for i, side in enumerate(tests):
        side.id = f"t{i}"
        _load(side, registries, root, hasher, declared)
    hasher.save()
    if not any(s.items is not None for s in corpora) or not any(s.items is not None for s in tests):
        reasons = "; ".join(f"{s.label}: {s.unavailable}" for s in corpora + tests if s.unavailable)
        raise UmdbenchError(
            f"umdbench overlap: no corpus and test split could both be read ({reasons}); fix: pass "
            f"--data-root DIR (the folder holding the datasets) or set {DATA_ROOT_ENV}=DIR."
        )
    report = _report(corpora, tests, cells, args.threshold, root, hasher)
    hasher.save()
    _print(report, corpora, tests, args.examples)
    out = Path(args.out) if args.out else layout.overlap_report_path(args.work_dir)
    from umdbench.util import atomic_write_json

    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out, report)
    print(f"\nwrote {out} ({hasher.decoded} images hashed now, the rest from the content cache)")
    return 0


def _subjects(path: str | None) -> dict:
    if not path:
        return {}
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"--subjects {path}: cannot be read as JSON ({exc}); fix: give a file holding "
            f'{{"dataset": {{"study id": "subject"}}}}.'
        ) from exc
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise ConfigError(
            f'--subjects {path}: expected {{"dataset": {{"study id": "subject"}}}}, one object per '
            f"dataset; fix the file."
        )
    return data


def _supervised(registries, cls) -> bool:
    return cls.task in registries.task and registries.task.get(cls.task).supervised


def _corpus_config(registries, name: str) -> dict | None:
    corpus = registries.dataset.get(name).default_pretrain_corpus
    if corpus is None:
        return None
    corpus = dict(corpus) if isinstance(corpus, dict) else {"type": corpus}
    corpus.setdefault("options", {})
    return corpus


def _stored_root(cls, name: str) -> str | None:
    """A dataset's root as rows store it (``<data-root>/sub``)."""
    if not cls.needs_root:
        return None
    return DATA_ROOT_MARK + (f"/{cls.root_subdir}" if cls.root_subdir else "")


def _default_sides(registries, selected: list[str]) -> tuple[list[Side], list[Side], list]:
    """Every downstream dataset's test split (once per option set a registered suite gives it, else
    with its defaults) and every dataset's default corpus; a named corpus is added as it is."""
    from umdbench.plan.suites import all_suites

    suite_options: dict[str, list[dict]] = {}
    for suite in all_suites(registries):
        for dataset, pairs in suite.dataset_options:
            opts = {k.removeprefix("dataset.options."): v for k, v in pairs if k.startswith("dataset.options.")}
            if opts not in suite_options.setdefault(dataset, []):
                suite_options[dataset].append(opts)
    names = selected or registries.dataset.names()
    corpora: dict[tuple, Side] = {}
    tests: dict[tuple, Side] = {}
    for name in names:
        try:
            cls = registries.dataset.get(name)
        except UmdbenchError:
            continue  # a plugin that cannot be imported: `umdbench plugins` says why
        if not _supervised(registries, cls):
            if selected:
                side = Side("corpus", {"type": name, "root": _stored_root(cls, name), "options": {}}, "train", name)
                corpora.setdefault(side.key, side)
            continue
        corpus = _corpus_config(registries, name)
        if corpus is None:
            continue
        corpus["root"] = _stored_root(registries.dataset.get(corpus["type"]), corpus["type"])
        cside = Side("corpus", corpus, "train", corpus["type"])
        corpora.setdefault(cside.key, cside)
        for opts in suite_options.get(name) or [{}]:
            side = Side(
                "test",
                {"type": name, "root": _stored_root(cls, name), "options": opts, "on_error": "skip"},
                "test",
                name,
                default_corpus=cside.key,
            )
            tests.setdefault(side.key, side)
    return list(corpora.values()), list(tests.values()), []


def _sides_of_rows(rows: list[dict], selected: list[str]) -> tuple[list[Side], list[Side], list]:
    """The corpora and evaluated splits of the store's rows, and one cell entry per row."""
    corpora: dict[tuple, Side] = {}
    tests: dict[tuple, Side] = {}
    cells = []
    for row in rows:
        config = row.get("config") or {}
        data = config.get("dataset") or {}
        if not data.get("type"):
            continue
        corpus = (config.get("pretrain") or {}).get("corpus")
        if selected and row["dataset"] not in selected and (not corpus or corpus.get("type") not in selected):
            continue
        test = Side(
            "test",
            {k: data.get(k) for k in ("type", "root", "options", "on_error")},
            (config.get("eval") or {}).get("split", "test"),
            row["dataset"],
        )
        test = tests.setdefault(test.key, test)
        test.rows += 1
        if row.get("data_fingerprint"):
            test.row_fingerprints.add(row["data_fingerprint"])
        cside = None
        if corpus:
            cside = Side(
                "corpus",
                {"type": corpus.get("type"), "root": corpus.get("root"), "options": corpus.get("options") or {}},
                "train",
                corpus.get("type"),
            )
            cside = corpora.setdefault(cside.key, cside)
            cside.rows += 1
        cells.append((row, cside, test))
    return list(corpora.values()), list(tests.values()), cells


def _resolve_root(stored: str | None, root: Path | None) -> str | None:
    if stored is None or not str(stored).startswith(DATA_ROOT_MARK):
        return stored
    if root is None:
        raise ConfigError(
            f"the data is configured as {stored}: pass --data-root DIR (or set {DATA_ROOT_ENV}) to say "
            f"where the data root is on this machine."
        )
    return str(root) + str(stored)[len(DATA_ROOT_MARK) :]


def _load(side: Side, registries, root: Path | None, hasher, declared: dict) -> None:
    """Build the side's plugin and hash its split's items; a side that cannot be read is noted
    (``unavailable``), not fatal: the other pairs are still audited."""
    from umdbench.api import DataError
    from umdbench.data.overlap import split_items

    try:
        cls = registries.dataset.get(side.data["type"])
        plugin = cls(
            root=_resolve_root(side.data.get("root"), root),
            on_error=side.data.get("on_error") or "raise",
            **(side.data.get("options") or {}),
        )
        records = plugin.records(side.split)
        side.items = split_items(plugin, records, hasher, root, declared)
        side.left_out = dict((getattr(plugin, "left_out", None) or {}).get(side.split, {}))
        side.plugin = plugin
        try:
            side.fingerprint = plugin.fingerprint()
        except (DataError, OSError, ValueError):
            side.fingerprint = None
    except (UmdbenchError, DataError, OSError, ValueError, KeyError) as exc:
        side.unavailable = " ".join(str(exc).split()) or type(exc).__name__


def _portable(text: str | None, root: Path | None) -> str | None:
    from umdbench.util import portable_paths

    return portable_paths(text, root) if text else text


def _report(corpora: list[Side], tests: list[Side], cells: list, threshold: int, root: Path | None, hasher) -> dict:
    """The overlap report as data. Longer than 80 lines because it walks every corpus against every test split once, in
    one pass that fills one report."""
    from umdbench.data.overlap import FORMAT, HASH_NAME, match, split_items

    pairs, pair_of = [], {}
    for c in corpora:
        for t in tests:
            if c.items is None or t.items is None:
                continue
            result = match(c.items, t.items, threshold)
            if result is None:
                continue  # 2-D images against 3-D studies
            left_out = []
            for option, records in sorted(c.left_out.items()):
                removed = split_items(c.plugin, records, hasher, root)
                r = match(removed, t.items, threshold) or {}
                left_out.append(
                    {
                        "option": option,
                        "records": len(records),
                        "items": len(removed.items),
                        **{k: r.get(k, 0) for k in ("overlap", "exact", "near")},
                        "shared": r.get("shared", []),
                    }
                )
            used = sum(1 for _, cs, ts in cells if cs is c and ts is t)
            pair_of[(c.id, t.id)] = len(pairs)
            pairs.append(
                {
                    "corpus": c.id,
                    "test": t.id,
                    "rows": used,
                    "default": t.default_corpus == c.key,
                    **result,
                    "left_out": left_out,
                }
            )
    out_cells = []
    for row, cs, ts in cells:
        index = pair_of.get((cs.id, ts.id)) if cs is not None else None
        overlap = pairs[index]["overlap"] if index is not None else 0
        out_cells.append(
            {
                "cell_key": row["cell_key"],
                "suite": row.get("suite"),
                "cell_name": row.get("cell_name"),
                "dataset": row["dataset"],
                "preset": row.get("preset"),
                "seed": row.get("seed"),
                "corpus": cs.id if cs is not None else None,
                "test": ts.id,
                "pair": index,
                "flagged": bool(overlap),
            }
        )

    def side_json(s: Side) -> dict:
        out = {
            "id": s.id,
            "dataset": s.dataset,
            "type": s.data.get("type"),
            "options": s.data.get("options") or {},
            "root": _portable(s.data.get("root"), root),
            "split": s.split,
            "label": s.label,
            "fingerprint": s.fingerprint,
            "rows": s.rows,
        }
        if s.role == "test":
            out["row_fingerprints"] = sorted(s.row_fingerprints)
        if s.items is not None:
            out.update(
                {
                    "records": s.items.records,
                    "items": len(s.items.items),
                    "kind": s.items.kind,
                    "unreadable": len(s.items.unreadable),
                }
            )
            if s.left_out:
                out["left_out"] = {k: len(v) for k, v in sorted(s.left_out.items())}
        else:
            out["unavailable"] = s.unavailable
        return out

    return {
        "format": FORMAT,
        "tool": "umdbench overlap",
        "hash": HASH_NAME,
        "threshold": threshold,
        "near_duplicate": f"Hamming distance <= {threshold} between 128-bit perceptual hashes (64-bit pHash + "
        f"64-bit dHash of the grey image); exact = same file content (sha256); 3-D studies: "
        f"same content or same declared subject",
        "corpora": [side_json(s) for s in corpora],
        "tests": [side_json(s) for s in tests],
        "pairs": pairs,
        "cells": out_cells,
    }


def _n(value: int) -> str:
    return f"{value:,}"


def _print(report: dict, corpora: list[Side], tests: list[Side], examples: int) -> None:
    """Print the overlap report. Longer than 80 lines because it is one report, printed section by section in the order
    a reader meets it."""
    print(f"train/test overlap; near duplicate: {report['near_duplicate']}.")
    tests_by_id = {t.id: t for t in tests}
    for c in corpora:
        if c.items is None:
            print(f"\npre-training corpus {c.label}: not read ({c.unavailable})")
            continue
        unit = "studies" if c.items.kind == "study" else "images"
        print(
            f"\npre-training corpus {c.label}, split {c.split}: {_n(c.items.records)} records, "
            f"{_n(len(c.items.items))} {unit}"
            + (
                "; left out by its options: "
                + ", ".join(f"{k} {len(v)} records" for k, v in sorted(c.left_out.items()))
                if c.left_out
                else ""
            )
        )
        for pair in (p for p in report["pairs"] if p["corpus"] == c.id):
            t = tests_by_id[pair["test"]]
            unit = "studies" if pair["kind"] == "study" else "images"
            used = (
                f"  [{pair['rows']} rows pre-trained on this corpus were evaluated here]"
                if pair["rows"]
                else f"  [{t.dataset}'s default pre-training corpus]"
                if pair["default"]
                else ""
            )
            if pair["kind"] == "study":
                counts = f"{pair['exact']} same content, {pair['same_subject']} same subject"
            else:
                counts = f"{pair['exact']} exact, {pair['near']} near"
            shared = (
                f"{pair['overlap']} {unit} ({_n(pair['overlap_records'])} records) shared: {counts}"
                if pair["overlap"]
                else "none shared"
            )
            print(
                f"  x {t.label} ({_n(pair['test_records'])} records, {_n(pair['test_items'])} {unit}): {shared}{used}"
            )
            for s in pair["shared"][:examples]:
                how = {
                    "exact": "same content",
                    "near": f"distance {s.get('distance')}",
                    "subject": f"subject {s.get('subject')}",
                }[s["how"]]
                print(f"      {s['test']} ~ {s['corpus']} ({how})")
            for lo in pair["left_out"]:
                print(
                    f"      {lo['option']} left out {lo['records']} records ({lo['items']} {unit}): "
                    + (
                        f"{lo['overlap']} of these test {unit} among them ({lo['exact']} exact, {lo['near']} near)"
                        if lo["overlap"]
                        else "none of them a duplicate of these test " + unit
                    )
                )
    for t in tests:
        if t.items is None:
            print(f"\ntest split {t.label}: not read ({t.unavailable})")
        elif t.items.unreadable:
            print(
                f"\ntest split {t.label}: {len(t.items.unreadable)} records without a readable image/study, left "
                f"out (first: {t.items.unreadable[0]})"
            )
        if t.items is not None and t.row_fingerprints and t.fingerprint not in t.row_fingerprints:
            print(
                f"\nnote: {t.label}: its rows record data fingerprint "
                f"{', '.join(f[:12] for f in sorted(t.row_fingerprints))}; this copy's is {str(t.fingerprint)[:12]} "
                f"(rows stored before data fingerprints hashed file contents record the older rule's value, "
                f"or the data differs): the audit is of this copy."
            )
    cells = report["cells"]
    if cells:
        groups: dict[tuple, list] = {}
        for cell in cells:
            groups.setdefault(
                (cell["suite"] or "-", cell["cell_name"] or "-", cell["dataset"], cell["preset"]), []
            ).append(cell)
        flagged = {k: v for k, v in groups.items() if any(c["flagged"] for c in v)}
        pre = sum(1 for c in cells if c["corpus"] is not None)
        print(
            f"\ncells whose pre-training saw a test item (exact or near duplicate, or same study): {len(flagged)} of "
            f"{len(groups)} cells ({sum(len(v) for v in flagged.values())} of {pre} rows with pre-training; "
            f"{len(cells) - pre} rows train from scratch)"
        )
        for (suite, name, dataset, preset), members in sorted(flagged.items()):
            pair = report["pairs"][members[0]["pair"]]
            seeds = ", ".join(str(c["seed"]) for c in sorted(members, key=lambda c: c["seed"] or 0))
            print(
                f"  {suite} / {name} / {dataset} (preset {preset}, seeds {seeds}): {pair['overlap']} test "
                f"{'studies' if pair['kind'] == 'study' else 'images'} ({pair['overlap_records']} records)"
            )
