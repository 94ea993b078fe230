"""Round 2 of "trustworthy results" on the 2-D side: `umdbench data check` refuses what `umdbench
run` refuses (a repeated record id, an empty split, an image outside the folder), a JSON boolean
answer is refused by both, fingerprints cover image bytes (paid once per file version, also on the
shared release copies), an artifact.json without a checksum is corrupt, and a garbled stored
config.json is written again.

Each test points ``UMDBENCH_CACHE_DIR`` (the content cache) at its own tmp folder.
"""

import json
import os
import time

import pytest

from tests.e2e.test_data_validation import make_vqa_rad, one_paragraph_error, qa, run, write_image
from umdbench.cli import main
from umdbench.errors import CheckpointError
from umdbench.results.store import ResultsStore


@pytest.fixture(autouse=True)
def _content_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("UMDBENCH_CACHE_DIR", str(tmp_path / "content-cache"))


def tree_state(root):
    return {str(p): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(
    "case, run_says, check_says",
    [
        ("duplicate id", "record id 'vqa-rad/test/100' occurs twice", "record id 'vqa-rad/test/100' occurs twice"),
        ("empty test", "no records in split 'test'", "has no records in split 'test'"),
        ("outside root", "lies outside the dataset folder", "elsewhere.jpg lies outside the dataset folder"),
        ("boolean answer", "answer is the JSON boolean true, not text", "answer is the JSON boolean true, not text"),
    ],
)
def test_data_check_refuses_what_run_refuses(tmp_path, capsys, case, run_says, check_says):
    write_image(tmp_path / "data" / "elsewhere.jpg", 9)
    test = {
        "duplicate id": [qa(100, "synpic4.jpg"), qa(100, "synpic5.jpg", "no")],
        "empty test": [],
        "outside root": [qa(100, "../../elsewhere.jpg"), qa(101, "synpic5.jpg", "no")],
        "boolean answer": [qa(100, "synpic4.jpg", True), qa(101, "synpic5.jpg", "no")],
    }[case]
    folder = make_vqa_rad(tmp_path / "data", test=test)
    before = tree_state(folder)
    assert main(run(tmp_path / "data", tmp_path / "work")) == 2
    err = one_paragraph_error(capsys)
    assert run_says in err and "fix:" in err, err
    assert not list((tmp_path / "work").glob("stages/*/train"))
    assert main(["data", "check", "vqa-rad", "--data-root", str(tmp_path / "data")]) == 1
    out = capsys.readouterr().out
    assert check_says in out and "fix:" in out, out
    assert tree_state(folder) == before


def test_a_boolean_answer_is_skipped_and_counted_with_on_error_skip(tmp_path, capsys):
    from umdbench_plugins.datasets.vqa_rad import VQARad

    train = [qa(i, f"synpic{i % 4}.jpg", ("yes", "no")[i % 2]) for i in range(8)]
    train[3]["answer"] = False
    folder = make_vqa_rad(tmp_path / "data", train=train)
    ds = VQARad(root=folder, on_error="skip")
    assert len(ds.records("train")) == 7 and "JSON boolean false" in ds.skipped[0]
    assert "true" not in ds.label_names() and "false" not in ds.label_names()


def test_an_image_replaced_by_one_of_the_same_size_changes_the_fingerprint(tmp_path):
    from umdbench_plugins.datasets.vqa_rad import VQARad

    folder = make_vqa_rad(tmp_path / "data")
    image = folder / "images" / "synpic5.jpg"
    fp = VQARad(root=folder).fingerprint()
    st = image.stat()
    data = bytearray(image.read_bytes())
    data[-10] ^= 0xFF  # same size, other pixels
    image.write_bytes(bytes(data))
    os.utime(image, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert image.stat().st_size == st.st_size and image.stat().st_mtime_ns == st.st_mtime_ns
    assert VQARad(root=folder).fingerprint() != fp


def test_a_dangling_image_symlink_does_not_crash_the_fingerprint(tmp_path, capsys):
    folder = make_vqa_rad(tmp_path / "data")
    (folder / "images" / "synpic5.jpg").unlink()
    (folder / "images" / "synpic5.jpg").symlink_to(tmp_path / "gone.jpg")
    assert main(run(tmp_path / "data", tmp_path / "work")) == 2
    err = one_paragraph_error(capsys)
    assert "synpic5.jpg" in err


@pytest.mark.parametrize("name, folder", [("vqa-rad", "vqa_rad"), ("slake", "slake"), ("vqa-med-2019", "vqa_med_2019")])
def test_release_fingerprints_hash_content_once(shared_datasets, tmp_path, monkeypatch, name, folder):
    from umdbench.data import content
    from umdbench.plugin import get_registries

    cls = get_registries().dataset.get(name)
    hashed = []
    real = content.hash_file
    monkeypatch.setattr(content, "hash_file", lambda p: hashed.append(p) or real(p))
    started = time.perf_counter()
    first = cls(root=shared_datasets / folder).fingerprint()
    cold = time.perf_counter() - started
    n = len(hashed)
    assert n > 100  # every image and annotation file
    content._CACHES.clear()  # a new process: the cache file, not this process's memory
    started = time.perf_counter()
    assert cls(root=shared_datasets / folder).fingerprint() == first
    warm = time.perf_counter() - started
    assert len(hashed) == n  # nothing hashed again
    assert warm < 2.0, (cold, warm)
    print(f"{name}: {n} files, cold {cold:.2f}s, warm {warm:.3f}s")


def test_the_content_cache_is_checked_against_the_file_and_survives_damage(tmp_path, monkeypatch):
    from umdbench.data import content

    data = tmp_path / "data"
    data.mkdir()
    (data / "a.bin").write_bytes(b"one")
    cache = content.ContentCache(data)
    first = cache.sha256(data / "a.bin")
    cache.save()
    (data / "a.bin").write_bytes(b"two")  # same size
    assert content.ContentCache(data).sha256(data / "a.bin") != first
    cache.path.write_text("{damaged")  # unreadable: ignored, hashed again, rewritten
    again = content.ContentCache(data)
    assert again.sha256(data / "a.bin") == content.hash_file(data / "a.bin") and again.hashed == 1
    again.save()
    assert content.ContentCache(data).files
    monkeypatch.setattr(content, "MAX_FOLDERS", 3)  # one file per data folder, the newest kept
    for i in range(5):
        (tmp_path / f"d{i}").mkdir()
        (tmp_path / f"d{i}" / "x").write_bytes(b"x")
        c = content.ContentCache(tmp_path / f"d{i}")
        c.sha256(tmp_path / f"d{i}" / "x")
        c.save()
    assert len(list(cache.path.parent.glob("*.json"))) == 3


# -- work dir: artifact.json without a checksum, garbled config.json ------------------------------------
class _Stage:
    dirname = "tune-direct-0123456789abcdef"
    key = "0123456789abcdef" * 4


@pytest.mark.parametrize("content", ["{}", '{"key": "x", "wall_time_s": 3.0}', '{"sha256": null}', "[]"])
def test_an_artifact_json_without_a_checksum_is_corrupt(tmp_path, content):
    from umdbench.run.checkpoint import load_artifact
    from umdbench.run.workspace import Workspace

    ws = Workspace(tmp_path / "work")
    stage = _Stage()
    import torch

    ws.save_stage(stage, {"w": torch.ones(2)})
    assert ws.load_stage(stage)["w"].sum() == 2
    marker = ws.stage_dir(stage) / "artifact.json"
    marker.write_text(content)
    with pytest.raises(CheckpointError) as info:
        ws.load_stage(stage)
    text = str(info.value)
    assert str(marker) in text and "no sha256" in text and f"Delete the folder {ws.stage_dir(stage)}" in text
    with pytest.raises(CheckpointError, match="no recorded sha256"):
        load_artifact(ws.weights_path(stage), None)


SMALL = [
    "model.image_size=32",
    "data.num_workers=0",
    "data.eval_batch_size=50",
    "dataset.options.n_train=32",
    "dataset.options.n_val=10",
    "dataset.options.n_test=20",
    "tune.0.train.batch_size=8",
    "tune.0.train.max_iters=2",
]


def medsynth(work):
    return [
        "run",
        "--pretrain",
        "none",
        "--tune",
        "direct",
        "--dataset",
        "medsynth",
        "--work-dir",
        str(work),
        "--cfg-options",
        *SMALL,
    ]


@pytest.mark.slow
def test_a_garbled_config_json_is_rewritten_and_an_emptied_marker_is_refused(tmp_path, capsys):
    work = tmp_path / "work"
    assert main(medsynth(work)) == 0
    (config,) = work.glob("runs/*/config.json")
    good = json.loads(config.read_text())
    config.write_bytes(b"{garbled")
    capsys.readouterr()
    assert main(medsynth(work)) == 0
    assert "already in the store" in capsys.readouterr().out
    rewritten = json.loads(config.read_text())
    assert rewritten["config"] == good["config"] and rewritten["config_hash"] == good["config_hash"]
    assert [p["key"] for p in rewritten["plan"]] == [p["key"] for p in good["plan"]]
    assert [p["dir"] for p in rewritten["plan"]] == [p["dir"] for p in good["plan"]]

    (marker,) = work.glob("stages/tune-direct-*/artifact.json")
    marker.write_text("{}")
    (work / "results.sqlite").unlink()  # evaluated again, from the cached stage
    assert main(medsynth(work)) == 2
    err = one_paragraph_error(capsys)
    assert str(marker) in err and "no sha256" in err and "Delete the folder" in err
    assert not (work / "results.sqlite").is_file() or not ResultsStore(work / "results.sqlite").rows()
