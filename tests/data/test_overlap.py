"""`umdbench overlap`: perceptual hashes, their cache, the audit of corpora against test splits, the
flagged cells, the line under each board and the corpus option that removes near duplicates."""

from __future__ import annotations

import io
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from umdbench.cli import main
from umdbench.data import content
from umdbench.data import overlap as ov
from umdbench.run.workspace import Workspace

SHARED = Path(os.environ.get("UMDBENCH_SHARED_DATASETS") or Path(__file__).resolve().parents[3] / "shared" / "datasets")


def scan(seed: int, size=(160, 128)) -> Image.Image:
    """A radiograph-like grey image: dark field, a bright body of random pose, a few blobs."""
    rng = np.random.default_rng(seed)
    w, h = size
    y, x = np.mgrid[0:h, 0:w] / np.array([h, w])[:, None, None]
    cy, cx, ry, rx = rng.uniform(0.35, 0.65), rng.uniform(0.35, 0.65), rng.uniform(0.2, 0.4), rng.uniform(0.2, 0.4)
    img = 200.0 * ((((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2) < 1) * (0.6 + 0.4 * x)
    for _ in range(4):
        by, bx, r = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.04, 0.1)
        img += rng.uniform(-120, 120) * (((y - by) ** 2 + (x - bx) ** 2) < r * r)
    return Image.fromarray(np.clip(img + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8), mode="L")


def save(img: Image.Image, path: Path, scale: float = 1.0, quality: int = 92) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if scale != 1.0:
        img = img.resize((int(img.width * scale), int(img.height * scale)), Image.Resampling.BILINEAR)
    img.convert("RGB").save(path, format="JPEG", quality=quality)
    return path


# ---------------------------------------------------------------------------------------------
# hashing and its cache
# ---------------------------------------------------------------------------------------------
def test_a_resized_reencoded_copy_is_a_near_duplicate_and_an_unrelated_image_is_not(tmp_path):
    original = ov.hash_image_file(save(scan(1), tmp_path / "a.jpg"))
    for scale, quality in ((0.5, 70), (1.7, 60), (0.8, 95)):
        buf = io.BytesIO()
        copy = scan(1).resize((int(160 * scale), int(128 * scale)), Image.Resampling.BICUBIC)
        copy.convert("RGB").save(buf, format="JPEG", quality=quality)
        assert ov.hamming(original, ov.perceptual_hash(Image.open(buf))) <= ov.DEFAULT_THRESHOLD, (scale, quality)
    png = save(scan(1), tmp_path / "b.jpg")  # a second encode, another name
    assert ov.hamming(original, ov.hash_image_file(png)) <= 2
    for seed in range(2, 12):  # unrelated images of the same kind are far apart
        assert ov.hamming(original, ov.perceptual_hash(scan(seed))) > ov.DEFAULT_THRESHOLD, seed
    # 16-bit greyscale is rescaled to its own range (a contrast stretch), not clipped to white
    wide = Image.fromarray(np.asarray(scan(1), dtype=np.uint16) * 257)
    assert ov.hamming(ov.perceptual_hash(wide), ov.perceptual_hash(scan(1))) <= ov.DEFAULT_THRESHOLD
    dist, index, within = ov.nearest([original], [ov.perceptual_hash(scan(5)), original], ov.DEFAULT_THRESHOLD)
    assert (int(dist[0]), int(index[0]), int(within[0])) == (0, 1, 1)


def test_each_image_content_is_decoded_once_across_hashers_and_processes(tmp_path, monkeypatch):
    monkeypatch.setenv(content.CACHE_ENV, str(tmp_path / "cache"))
    data = tmp_path / "data"
    a = save(scan(1), data / "a.jpg")
    b = data / "copy_of_a.jpg"
    b.write_bytes(a.read_bytes())  # same content under another name
    decodes = []
    real = ov.hash_image_file
    monkeypatch.setattr(ov, "hash_image_file", lambda p: decodes.append(Path(p).name) or real(p))
    first = ov.Hasher()
    sha, value = first.image_file(a, data)
    assert first.image_file(b, data) == (sha, value) and decodes == ["a.jpg"] and first.decoded == 1
    first.save()
    assert ov.Hasher().image_file(a, data) == (sha, value) and ov.Hasher().decoded == 0 and len(decodes) == 1
    monkeypatch.setattr(content, "_CACHES", {})  # a new process: read back from the cache file
    again = ov.Hasher()
    assert again.image_file(a, data) == (sha, value) and again.decoded == 0 and len(decodes) == 1
    a.write_bytes(save(scan(2), tmp_path / "other.jpg").read_bytes())  # new content: hashed again
    assert again.image_file(a, data)[1] != value and decodes[-1] == "a.jpg" and len(decodes) == 2


def test_an_unreadable_image_is_listed_not_fatal(tmp_path):
    from umdbench.api import Record

    good = save(scan(1), tmp_path / "good.jpg")
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(good.read_bytes()[:200])  # truncated
    records = [Record("r1", str(good), "q"), Record("r2", str(bad), "q"), Record("r3", str(good), "q")]
    items = ov.split_items(None, records, ov.Hasher(), tmp_path)
    assert items.records == 3 and len(items.items) == 1 and next(iter(items.items.values())).records == 2
    assert (
        len(items.unreadable) == 1 and items.unreadable[0].startswith("record r2:") and "bad.jpg" in items.unreadable[0]
    )
    assert next(iter(items.items.values())).name == "good.jpg"  # relative to the data root


def test_studies_match_by_content_and_by_declared_subject():
    from umdbench.api import Record

    rng = np.random.default_rng(0)
    vol = {m: rng.random((4, 4, 4)).astype(np.float16) for m in ("t1", "t2")}
    other = {m: rng.random((4, 4, 4)).astype(np.float16) for m in ("t1", "t2")}
    hasher = ov.Hasher()

    class Plugin:
        name = "phantoms"

    corpus = ov.split_items(
        Plugin(), [Record("c/0001", vol, ""), Record("c/0002", other, "", extra={"subject": "P7"})], hasher
    )
    test = ov.split_items(
        Plugin(),
        [
            Record("t/0001", {k: v.copy() for k, v in vol.items()}, ""),
            Record("t/0002", {"t1": vol["t1"]}, "", extra={"subject": "P7"}),
            Record("t/0003", {"t1": other["t2"]}, ""),
        ],
        hasher,
    )
    result = ov.match(corpus, test)
    assert (result["kind"], result["exact"], result["same_subject"], result["overlap"]) == ("study", 1, 1, 2)
    # a declared mapping (--subjects) names the subject of a study id
    mapped = ov.split_items(
        Plugin(), [Record("t/0003", {"t1": other["t2"]}, "")], hasher, declared={"phantoms": {"0003": "P7"}}
    )
    assert ov.match(corpus, mapped)["same_subject"] == 1
    images = ov.split_items(None, [Record("i", np.zeros((8, 8, 3), np.uint8), "")], hasher)
    assert ov.match(corpus, images) is None  # 2-D images are not compared with 3-D studies


# ---------------------------------------------------------------------------------------------
# fixtures in the release layouts
# ---------------------------------------------------------------------------------------------
def make_data(root: Path) -> dict:
    """VQA-RAD (2 test images), SLAKE and VQA-Med-2019 whose train split holds an exact copy of
    VQA-RAD's synpic2 (same name) and a resized, re-encoded copy of its synpic1 under another name."""
    rad = root / "vqa_rad"
    for i in (1, 2, 3):
        save(scan(i), rad / "images" / f"synpic{i}.jpg")
    row = {
        "qid": 1,
        "image_name": "synpic3.jpg",
        "question": "Is this normal?",
        "answer": "Yes",
        "answer_type": "CLOSED",
        "question_type": "PRES",
        "phrase_type": "freeform",
        "image_organ": "CHEST",
    }
    (rad / "trainset.json").write_text(json.dumps([row]))
    (rad / "testset.json").write_text(
        json.dumps(
            [
                {**row, "qid": 2, "image_name": "synpic1.jpg"},
                {**row, "qid": 3, "image_name": "synpic2.jpg"},
                {**row, "qid": 4, "image_name": "synpic1.jpg", "question": "Where?"},
            ]
        )
    )
    slake = root / "slake"
    for i in (0, 1):
        save(scan(20 + i), slake / "imgs" / f"xmlab{i}" / "source.jpg")
    base = {
        "img_id": 0,
        "img_name": "xmlab0/source.jpg",
        "question": "Which organ?",
        "answer": "Liver",
        "q_lang": "en",
        "answer_type": "OPEN",
        "qid": 0,
    }
    (slake / "train.json").write_text(json.dumps([base]))
    (slake / "validate.json").write_text(json.dumps([{**base, "qid": 1}]))
    (slake / "test.json").write_text(json.dumps([{**base, "qid": 2, "img_id": 1, "img_name": "xmlab1/source.jpg"}]))
    med = root / "vqa_med_2019"
    save(scan(1), med / "train" / "Train_images" / "synpic900.jpg", scale=0.6, quality=70)  # a near copy
    (med / "train" / "Train_images" / "synpic2.jpg").write_bytes((rad / "images" / "synpic2.jpg").read_bytes())
    save(scan(30), med / "train" / "Train_images" / "synpic901.jpg")
    save(scan(31), med / "val" / "Val_images" / "synpic902.jpg")
    for split, images in (("train", ("synpic900", "synpic2", "synpic901")), ("val", ("synpic902",))):
        qa = med / split / "QAPairsByCategory"
        qa.mkdir(parents=True)
        for c in ("C1_Modality", "C2_Plane", "C3_Organ", "C4_Abnormality"):
            (qa / f"{c}_{split}.txt").write_text("".join(f"{im}|what plane is this?|axial\n" for im in images))
    (med / "test").mkdir()
    (med / "test" / "VQAMed2019_Test_Questions_w_Ref_Answers.txt").write_text("synpic902|plane|what plane?|axial\n")
    return {"root": root}


@pytest.fixture
def data_root(tmp_path, monkeypatch):
    monkeypatch.setenv(content.CACHE_ENV, str(tmp_path / "cache"))
    make_data(tmp_path / "data")
    return tmp_path / "data"


def _pair(report: dict, corpus_options: dict, test: str) -> dict:
    corpora = {c["id"]: c for c in report["corpora"]}
    tests = {t["id"]: t for t in report["tests"]}
    for pair in report["pairs"]:
        c, t = corpora[pair["corpus"]], tests[pair["test"]]
        if c["options"] == corpus_options and t["dataset"] == test:
            return pair
    raise AssertionError(f"no pair {corpus_options} x {test}")


RAD_CORPUS = {"sources": ["slake", "vqa-med-2019"], "exclude_images_of": ["vqa-rad"]}


def test_the_command_reports_exact_and_near_duplicates_without_absolute_paths(data_root, tmp_path, capsys):
    work = tmp_path / "work"
    assert main(["overlap", "--data-root", str(data_root), "--work-dir", str(work), "--datasets", "vqa-rad"]) == 0
    out = capsys.readouterr().out
    text = (work / "overlap.json").read_text()
    report = json.loads(text)
    listing = out.split("\nwrote ")[0]  # the last line names the report file the user asked for
    assert str(tmp_path) not in text and str(tmp_path) not in listing
    assert not re.search(r'"/|\s/(tmp|home|work)/', text)
    pair = _pair(report, RAD_CORPUS, "vqa-rad")
    # synpic1 (2 test questions) has a resized copy under another name in VQA-Med train: near
    assert (pair["test_items"], pair["test_records"], pair["exact"], pair["near"]) == (2, 3, 0, 1)
    assert pair["shared"][0]["test"] == "vqa_rad/images/synpic1.jpg"
    assert pair["shared"][0]["corpus"] == "vqa_med_2019/train/Train_images/synpic900.jpg"
    assert pair["overlap_records"] == 2 and pair["default"] is True
    # exclude_images_of removed VQA-Med's synpic2 (3 records: one per category), an exact copy of a test image
    (removed,) = pair["left_out"]
    assert (removed["option"], removed["records"], removed["exact"], removed["near"]) == ("exclude_images_of", 3, 1, 0)
    assert "vqa_rad/images/synpic1.jpg ~ vqa_med_2019/train/Train_images/synpic900.jpg" in out
    assert "exclude_images_of left out 3 records (1 images): 1 of these test images among them" in out
    # --out writes elsewhere; --threshold 0 keeps only identical hashes
    assert (
        main(
            [
                "overlap",
                "--data-root",
                str(data_root),
                "--work-dir",
                str(work),
                "--datasets",
                "vqa-rad",
                "--threshold",
                "0",
                "--out",
                str(tmp_path / "strict.json"),
            ]
        )
        == 0
    )
    assert _pair(json.loads((tmp_path / "strict.json").read_text()), RAD_CORPUS, "vqa-rad")["near"] == 0


def test_command_errors_are_one_paragraph_with_exit_2(data_root, tmp_path, capsys):
    assert main(["overlap", "--data-root", str(data_root), "--work-dir", str(tmp_path), "--threshold", "200"]) == 2
    assert "--threshold 200" in capsys.readouterr().err
    assert main(["overlap", "--data-root", str(data_root), "--work-dir", str(tmp_path), "--datasets", "vqa-radd"]) == 2
    assert "vqa-rad" in capsys.readouterr().err  # did you mean
    bad = tmp_path / "subjects.json"
    bad.write_text("[1]")
    assert main(["overlap", "--work-dir", str(tmp_path), "--datasets", "brainsynth", "--subjects", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "subjects.json" in err and "fix" in err and len(err.strip().splitlines()) == 1


# ---------------------------------------------------------------------------------------------
# a work dir's rows: flagged cells and the line under each board
# ---------------------------------------------------------------------------------------------
def _row(key: str, name: str, pretrain: str, corpus: dict | None, seed: int = 0) -> dict:
    config = {
        "dataset": {"type": "vqa-rad", "root": "<data-root>/vqa_rad", "options": {}, "on_error": "raise"},
        "eval": {"split": "test"},
        "pretrain": {"type": pretrain, "corpus": {"type": "corpus", "root": "<data-root>", "options": corpus}}
        if corpus is not None
        else None,
    }
    return {
        "cell_key": key.ljust(32, "0"),
        "suite": "toy",
        "cell_name": name,
        "pretrain": pretrain,
        "tune": "direct",
        "dataset": "vqa-rad",
        "preset": "tiny",
        "seed": seed,
        "metrics": {"open": 50.0, "closed": 50.0, "overall": 50.0},
        "config": config,
        "config_hash": "h",
        "stage_keys": [],
        "git_commit": "c",
        "packages": {},
        "data_fingerprint": "old-rule",
        "wall_time_s": 1.0,
        "device": "cpu",
    }


SPEC = {
    "title": "toy",
    "datasets": ["vqa-rad"],
    "metrics": ["open", "closed", "overall"],
    "rows": [
        {"name": "scratch", "pretrain": "none", "tune": "direct"},
        {"name": "MR", "pretrain": "mr", "tune": "direct"},
        {"name": "MR dedup", "pretrain": "mr", "tune": "direct"},
    ],
}


def test_cells_whose_pretraining_saw_a_test_image_are_flagged_and_boards_say_so(data_root, tmp_path, capsys):
    from umdbench.plan.suites import Suite
    from umdbench.results.board_data import collect_suite_results
    from umdbench.results.board_markdown import render_suite

    ws = Workspace(tmp_path / "work")
    dedup = {**RAD_CORPUS, "exclude_near_duplicates_of": ["vqa-rad"]}
    for seed in (0, 1):
        ws.store.add(_row(f"s{seed}", "scratch", "none", None, seed))
        ws.store.add(_row(f"m{seed}", "MR", "mr", RAD_CORPUS, seed))
        ws.store.add(_row(f"d{seed}", "MR dedup", "mr", dedup, seed))
    suite = Suite.from_spec("toy", SPEC)
    before = render_suite(suite, collect_suite_results(ws.store, suite)["tiny"], "tiny")
    assert main(["overlap", "--data-root", str(data_root), "--work-dir", str(ws.work_dir)]) == 0
    out = capsys.readouterr().out
    report = ov.load_report(ws.work_dir)
    flagged = {(c["cell_name"], c["seed"]): c["flagged"] for c in report["cells"]}
    assert flagged == {
        ("scratch", 0): False,
        ("scratch", 1): False,
        ("MR", 0): True,
        ("MR", 1): True,
        ("MR dedup", 0): False,
        ("MR dedup", 1): False,
    }
    assert "1 of 3 cells (2 of 4 rows with pre-training; 2 rows train from scratch)" in out
    assert "toy / MR / vqa-rad (preset tiny, seeds 0, 1): 1 test images (2 records)" in out
    assert "rows record data fingerprint old-rule" in out  # the audited copy is not what the rows recorded
    # the corpus option left the near copy out, and the report says what each option removed
    assert _pair(report, dedup, "vqa-rad")["overlap"] == 0
    assert [lo["option"] for lo in _pair(report, dedup, "vqa-rad")["left_out"]] == [
        "exclude_images_of",
        "exclude_near_duplicates_of",
    ]
    after = render_suite(suite, collect_suite_results(ws.store, suite)["tiny"], "tiny", overlap=report)
    lines = [line for line in after.splitlines() if "train/test overlap" in line]
    assert len(lines) == 2, lines
    assert (
        "train/test overlap: 1 of the 2 test images (2 of 3 test records) have an exact or near duplicate in the "
        "pre-training corpus `corpus` (exclude_images_of vqa-rad; sources slake, vqa-med-2019) of MR: 0 exact"
    ) in lines[0]
    assert "train/test overlap: none found" in lines[1] and "of MR dedup" in lines[1]
    assert "`exclude_near_duplicates_of` left out 3 records (1 images); 1 of the test images are among them" in lines[1]
    # without a report the board is as before, and the report's lines are all it adds
    strip = lambda t: [l for l in t.split("generated")[0].splitlines() if "train/test overlap" not in l]  # noqa: E731
    assert [l for l in strip(after) if l] == [l for l in strip(before) if l]
    # copy-results carries the report, so a committed store renders the same lines
    copy = Workspace(tmp_path / "copy")
    copy.copy_results_from(ws)
    assert ov.load_report(copy.work_dir) == report


def test_a_board_of_rows_the_report_does_not_cover_says_so(tmp_path):
    from umdbench.plan.suites import Suite
    from umdbench.results.board_data import collect_suite_results
    from umdbench.results.board_markdown import render_suite

    ws = Workspace(tmp_path / "work")
    ws.store.add(_row("m0", "MR", "mr", RAD_CORPUS))
    suite = Suite.from_spec("toy", SPEC)
    report = {"format": 1, "threshold": 10, "pairs": [], "corpora": [], "tests": [], "cells": []}
    text = render_suite(suite, collect_suite_results(ws.store, suite)["tiny"], "tiny", overlap=report)
    assert "train/test overlap: not audited for MR" in text


# ---------------------------------------------------------------------------------------------
# the corpus option
# ---------------------------------------------------------------------------------------------
def test_the_corpus_option_leaves_out_near_duplicates_of_a_downstream_dataset(data_root):
    from umdbench_plugins.datasets.corpus import Corpus

    plain = Corpus(data_root)
    kept = {os.path.basename(r.image) for r in plain.records("train")}
    assert "synpic900.jpg" in kept and "synpic2.jpg" not in kept  # the name rule misses the renamed copy
    dedup = Corpus(data_root, exclude_near_duplicates_of=["vqa-rad"])
    kept = {os.path.basename(r.image) for r in dedup.records("train")}
    assert "synpic900.jpg" not in kept and "synpic901.jpg" in kept and "xmlab0" in str(dedup.records("train"))
    removed = dedup.left_out["train"]["exclude_near_duplicates_of"]
    assert len(removed) == 3 and all(r.extra["source"] == "vqa-med-2019" for r in removed)
    assert sum("near duplicate" in m for m in dedup.skipped) == 3
    assert dedup.deviations() and "exclude_near_duplicates_of" in dedup.deviations()[0]
    # a threshold of 0 keeps the re-encoded copy (its hash differs), and the key follows the option
    assert "synpic900.jpg" in {
        os.path.basename(r.image)
        for r in Corpus(data_root, exclude_near_duplicates_of=["vqa-rad"], near_duplicate_threshold=0).records("train")
    }
    assert dedup.fingerprint() != plain.fingerprint()
    assert Corpus(data_root, exclude_near_duplicates_of=[]).fingerprint() == plain.fingerprint()
    with pytest.raises(ValueError, match="near_duplicate_threshold"):
        Corpus(data_root, near_duplicate_threshold=500)


def test_a_run_with_the_option_records_it_among_its_deviations(data_root):
    from umdbench.plan.config import CellSpec, resolve
    from umdbench.plugin import get_registries

    cell = CellSpec(
        "mr",
        ("direct",),
        "vqa-rad",
        data_root=str(data_root),
        overrides=(("pretrain.corpus.options.exclude_near_duplicates_of", ["vqa-rad"]),),
    )
    resolved = resolve(cell, get_registries())
    assert resolved.config["pretrain"]["corpus"]["options"]["exclude_near_duplicates_of"] == ["vqa-rad"]
    assert any("exclude_near_duplicates_of" in d and "instead of the paper's" in d for d in resolved.deviations)


# ---------------------------------------------------------------------------------------------
# 3-D phantoms and the real data
# ---------------------------------------------------------------------------------------------
def test_the_brain_phantom_shares_no_study_with_its_corpus(tmp_path, capsys):
    pytest.importorskip("umdbench_brain")
    work = tmp_path / "work"
    assert main(["overlap", "--work-dir", str(work), "--datasets", "brainsynth"]) == 0
    pair = json.loads((work / "overlap.json").read_text())["pairs"][0]
    assert (pair["kind"], pair["test_items"], pair["corpus_items"], pair["overlap"]) == ("study", 24, 64, 0)
    assert (
        "x brainsynth test (24 records, 24 studies): none shared  [brainsynth's default pre-training corpus]"
        in capsys.readouterr().out
    )


@pytest.mark.realdata
def test_the_audit_runs_over_the_shared_datasets(tmp_path, capsys):
    for sub in ("vqa_rad", "slake", "vqa_med_2019"):
        if not (SHARED / sub).is_dir():
            pytest.skip(f"real data {SHARED / sub} not found (set UMDBENCH_SHARED_DATASETS)")
    work = tmp_path / "work"
    assert main(["overlap", "--data-root", str(SHARED), "--work-dir", str(work), "--datasets", "vqa-rad"]) == 0
    report = json.loads((work / "overlap.json").read_text())
    pair = _pair(report, RAD_CORPUS, "vqa-rad")
    # VQA-Med-2019 holds VQA-RAD test images: 6 under their own names (left out by exclude_images_of)
    # and 4 under neighbouring synpic numbers (near duplicates the name rule keeps)
    assert (pair["test_items"], pair["exact"], pair["near"]) == (203, 0, 4)
    assert pair["left_out"][0]["exact"] == 6
    assert all(not s["test"].startswith("/") and not s["corpus"].startswith("/") for s in pair["shared"])
