"""The notes under a dataset's table that come from beyond its rows' numbers: the no-image
reference points of the split the rows were evaluated on (``umdbench baselines``, kept in the work
dir and handed in by the caller) and the train/test overlap between the rows' pre-training corpus
and the test split (``umdbench overlap``'s report beside the store)."""

from __future__ import annotations

from umdbench.data.overlap import data_key, describe_data
from umdbench.results.board_data import SuiteResults
from umdbench.results.reference_points import row_reference_key
from umdbench.util import is_score

__all__ = ["overlap_lines", "overlap_pair", "reference_point_lines"]


def reference_point_lines(results: SuiteResults, names, dataset: str, points: dict) -> str:
    """Under a VQA dataset's table: the question-only and majority-answer accuracy of the split its
    rows were evaluated on (same data fingerprint), and which rows fall below question-only."""
    rows = [r for n in names for r in results.rows.get((n, dataset), [])]
    if not rows or "closed" not in rows[0]["metrics"]:
        return ""  # baselines are defined for VQA only
    splits = {row_reference_key(r) for r in rows}
    if len(splits) != 1 or (key := splits.pop()) not in points:
        return (
            "\n<sub>no-image reference points: `umdbench baselines --work-dir WORK_DIR` (the work dir of "
            "these runs) adds the question-only and majority-answer accuracy of this split here.</sub>\n"
        )
    point = points[key]

    def text(name: str) -> str:
        acc = point[name]
        rest = ", ".join(f"{m} {acc[m]:.2f}" for m in ("open", "closed") if is_score(acc.get(m)))
        return f"{name} {acc['overall']:.2f} overall" + (f" ({rest})" if rest else "")

    q_only = point["question only"]["overall"]
    below = [n for n in names if (v := results.metric(n, dataset, "overall")) and v[0] < q_only]
    verdict = (
        f"Rows whose mean overall is below question-only: {', '.join(below)}."
        if below
        else "Every row with a result is above question-only overall."
    )
    return (
        f"\n<sub>No-image reference points on the same split and data (`umdbench baselines {dataset}`): "
        f"{text('question only')} (bag-of-words logistic regression, no image); {text('majority answer')}. "
        f"{verdict}</sub>\n"
    )


def overlap_pair(report: dict, row: dict, corpus: dict, cells: dict) -> int | None:
    """The report's pair for a row: the one it names the row's cell in, else the pair of the same
    corpus config and test split whose audited data has the row's fingerprint."""
    cell = cells.get(row.get("cell_key"))
    if cell is not None and isinstance(cell.get("pair"), int) and 0 <= cell["pair"] < len(report["pairs"]):
        return cell["pair"]
    config = row.get("config") or {}
    data = config.get("dataset") or {}
    split = (config.get("eval") or {}).get("split", "test")
    corpora = {c.get("id"): c for c in report.get("corpora") or []}
    tests = {t.get("id"): t for t in report.get("tests") or []}
    for i, pair in enumerate(report["pairs"]):
        c, t = corpora.get(pair.get("corpus")), tests.get(pair.get("test"))
        if (
            c
            and t
            and data_key(c) == data_key(corpus)
            and data_key(t) == data_key(data)
            and t.get("split") == split
            and row.get("data_fingerprint") in {t.get("fingerprint"), *(t.get("row_fingerprints") or [])}
        ):
            return i
    return None


def overlap_lines(results: SuiteResults, names, dataset: str, report: dict | None) -> str:
    """Under a dataset's table, when the work dir keeps an overlap report (``umdbench overlap``):
    how many test images the pre-training corpus of its rows also holds, or that none was found."""
    if not report:
        return ""
    cells = {c.get("cell_key"): c for c in report.get("cells") or [] if isinstance(c, dict)}
    corpora = {c.get("id"): c for c in report.get("corpora") or []}
    found: dict[int, list[str]] = {}
    missing: list[str] = []
    for name in names:
        for row in results.rows.get((name, dataset), []):
            corpus = ((row.get("config") or {}).get("pretrain") or {}).get("corpus")
            if not corpus:
                continue  # trained from scratch: no corpus to share a test image with
            index = overlap_pair(report, row, corpus, cells)
            (missing if index is None else found.setdefault(index, [])).append(name)
    lines = []
    threshold = report.get("threshold")
    for index, members in sorted(found.items()):
        pair = report["pairs"][index]
        corpus = corpora.get(pair.get("corpus"), {})
        who = f"the pre-training corpus {describe_data(corpus)} of {', '.join(dict.fromkeys(members))}"
        study = pair.get("kind") == "study"
        unit = "studies" if study else "images"
        if pair.get("overlap"):
            how = (
                f"{pair['exact']} same content, {pair['same_subject']} same declared subject"
                if study
                else f"{pair['exact']} exact (same file content), {pair['near']} near (Hamming distance <= {threshold} "
                f"of a 128-bit perceptual hash)"
            )
            first = pair["shared"][0] if pair.get("shared") else None
            example = f", e.g. {first['test']} ~ {first['corpus']}" if first else ""
            text = (
                f"train/test overlap: {pair['overlap']} of the {pair['test_items']} test {unit} "
                f"({pair['overlap_records']} of {pair['test_records']} test records) have "
                f"{'a copy' if study else 'an exact or near duplicate'} in {who}: {how}{example}."
            )
        else:
            criterion = (
                "same content or declared subject"
                if study
                else (f"exact or near duplicate, Hamming distance <= {threshold} of a 128-bit perceptual hash")
            )
            text = (
                f"train/test overlap: none found: no test {unit[:-1] if not study else 'study'} of the "
                f"{pair['test_items']} is in the {pair['corpus_items']} {unit} of {who} ({criterion})."
            )
        for lo in pair.get("left_out") or []:
            text += f" Its option `{lo['option']}` left out {lo['records']} records ({lo['items']} {unit}); " + (
                f"{lo['overlap']} of the test {unit} are among them ({lo['exact']} exact, {lo['near']} near)."
                if lo.get("overlap")
                else f"no test {unit[:-1] if not study else 'study'} is among them."
            )
        lines.append(text + " (`umdbench overlap`; every shared item is listed in overlap.json beside the store.)")
    if missing:
        lines.append(
            f"train/test overlap: not audited for {', '.join(dict.fromkeys(missing))}: the overlap report "
            f"covers neither their corpus nor this data (`umdbench overlap --work-dir WORK_DIR` adds it)."
        )
    return "".join(f"\n<sub>{line}</sub>\n" for line in lines)
