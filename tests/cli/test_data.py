"""``umdbench data check`` / ``data download`` (download served from a loopback http.server)."""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import json
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from umdbench.cli import main


def run_cli(argv, capsys):
    """``umdbench ARGV`` in-process, through main's error path: (exit code, stdout, stderr)."""
    rc = main(argv)
    out = capsys.readouterr()
    return rc, out.out, out.err


def make_rad(root: Path, bad_image: bool = False) -> None:
    d = root / "vqa_rad"
    (d / "images").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(d / "images" / "synpic1.jpg")
    rows = [{"qid": 1, "image_name": "synpic1.jpg", "question": "Is it?", "answer": "yes", "answer_type": "CLOSED"}]
    if bad_image:
        rows.append({**rows[0], "qid": 2, "image_name": "synpic2.jpg"})
    (d / "trainset.json").write_text(json.dumps(rows))
    (d / "testset.json").write_text(json.dumps(rows[:1]))


def test_import_is_light():
    code = "import sys, umdbench.cli.data, umdbench.data, umdbench.data.download; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_check_ok_and_problems(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("UMDBENCH_DATA_ROOT", raising=False)
    make_rad(tmp_path)
    rc, out, _ = run_cli(["data", "check", "vqa-rad", "--data-root", str(tmp_path)], capsys)
    assert rc == 0 and "train" in out and "no problems found" in out
    monkeypatch.setenv("UMDBENCH_DATA_ROOT", str(tmp_path))
    (tmp_path / "vqa_rad" / "trainset.json").unlink()
    make_rad(tmp_path / "other", bad_image=True)
    rc, out, _ = run_cli(["data", "check", "vqa-rad", "--data-root", str(tmp_path / "other")], capsys)
    assert rc == 1 and "images/synpic2.jpg: image missing; used by record vqa-rad/train/2" in out


def test_check_missing_root_names_path_and_both_ways(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("UMDBENCH_DATA_ROOT", raising=False)
    rc, _, err = run_cli(["data", "check", "vqa-rad"], capsys)
    assert rc == 2 and "--data-root" in err and "UMDBENCH_DATA_ROOT" in err
    rc, _, err = run_cli(["data", "check", "vqa-rad", "--data-root", str(tmp_path / "nope")], capsys)
    assert rc == 2 and str(tmp_path / "nope") in err and "UMDBENCH_DATA_ROOT" in err
    rc, _, err = run_cli(["data", "check", "slake", "--data-root", str(tmp_path)], capsys)
    assert rc == 2 and str(tmp_path / "slake") in err


def _archive(files: dict[str, bytes], top: str | None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(f"{top}/{name}" if top else name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture()
def mirror(tmp_path):
    folder = tmp_path / "mirror"
    folder.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _rad_files() -> dict[str, bytes]:
    img = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), 50, dtype=np.uint8)).save(img, format="JPEG")
    rows = [{"qid": 1, "image_name": "synpic1.jpg", "question": "Is it?", "answer": "no", "answer_type": "CLOSED"}]
    return {
        "trainset.json": json.dumps(rows).encode(),
        "testset.json": json.dumps(rows).encode(),
        "images/synpic1.jpg": img.getvalue(),
    }


def test_download_verifies_and_unpacks(tmp_path, mirror, capsys):
    folder, url = mirror
    data = _archive(_rad_files(), top="vqa_rad")
    (folder / "vqa_rad.tar.gz").write_bytes(data)
    (folder / "SHA256SUMS").write_text(f"{hashlib.sha256(data).hexdigest()}  vqa_rad.tar.gz\n")
    root = tmp_path / "data"
    rc, out, err = run_cli(["data", "download", "vqa-rad", "--data-root", str(root), "--url-base", url], capsys)
    assert rc == 0, err
    assert "sha256 ok" in out
    assert (root / "vqa_rad" / "images" / "synpic1.jpg").is_file()
    assert not [p for p in root.iterdir() if p.name.startswith(".umdbench-download")]
    rc, out, _ = run_cli(["data", "check", "vqa-rad", "--data-root", str(root)], capsys)
    assert rc == 0


def test_download_checksum_mismatch(tmp_path, mirror, capsys):
    folder, url = mirror
    data = _archive(_rad_files(), top=None)
    (folder / "vqa_rad.tar.gz").write_bytes(data)
    (folder / "SHA256SUMS").write_text(f"{'0' * 64}  vqa_rad.tar.gz\n")
    root = tmp_path / "data"
    rc, _, err = run_cli(["data", "download", "vqa-rad", "--data-root", str(root), "--url-base", url], capsys)
    assert rc == 2 and "sha256 mismatch" in err and "vqa_rad.tar.gz" in err
    assert not (root / "vqa_rad").exists()
    # an explicit --sha256 pin overrides SHA256SUMS
    good = hashlib.sha256(data).hexdigest()
    rc, _, err = run_cli(
        ["data", "download", "vqa-rad", "--data-root", str(root), "--url-base", url, "--sha256", good], capsys
    )
    assert rc == 0, err
    assert (root / "vqa_rad" / "trainset.json").is_file()


def test_download_refuses_path_traversal(tmp_path, mirror, capsys):
    folder, url = mirror
    data = _archive({"../evil.txt": b"x"}, top=None)
    (folder / "vqa_rad.tar.gz").write_bytes(data)
    (folder / "SHA256SUMS").write_text(f"{hashlib.sha256(data).hexdigest()}  vqa_rad.tar.gz\n")
    rc, _, err = run_cli(["data", "download", "vqa-rad", "--data-root", str(tmp_path / "d"), "--url-base", url], capsys)
    assert rc == 2 and "outside the target" in err and not (tmp_path / "evil.txt").exists()


def test_download_without_url_names_homepage(tmp_path, capsys):
    rc, _, err = run_cli(["data", "download", "slake", "--data-root", str(tmp_path)], capsys)
    assert rc == 2 and "med-vqa.com/slake" in err and "--url-base" in err


def test_check_options_use_the_cfg_options_grammar_and_errors_are_one_paragraph(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("UMDBENCH_DATA_ROOT", raising=False)
    make_rad(tmp_path)
    rc, out, err = run_cli(
        ["data", "check", "vqa-rad", "--data-root", str(tmp_path), "--option", "verify_images=False"], capsys
    )
    assert rc == 0, err
    rc, _, err = run_cli(["data", "check", "vqa-rad", "--data-root", str(tmp_path), "--option", "nonsense=1"], capsys)
    assert rc == 2 and err.startswith("umdbench: error: dataset 'vqa-rad': ") and "unknown option" in err
    assert len(err.strip().splitlines()) == 1
    rc, _, err = run_cli(["data", "check", "vqa-rad", "--data-root", str(tmp_path), "--option", "layout=[osf"], capsys)
    assert rc == 2 and "--option 'layout=[osf'" in err and "does not parse" in err


@pytest.mark.parametrize("option", ["root", "on_error"])
def test_check_rejects_constructor_arguments_as_options(option, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("UMDBENCH_DATA_ROOT", raising=False)
    make_rad(tmp_path)
    rc, _, err = run_cli(
        ["data", "check", "vqa-rad", "--data-root", str(tmp_path), "--option", f"{option}={tmp_path}"], capsys
    )
    assert rc == 2 and err.startswith("umdbench: error: --option") and f"{option!r} is not a dataset option" in err
    if option == "root":
        assert "--data-root DIR" in err and "vqa_rad/" in err


def test_download_without_data_root(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("UMDBENCH_DATA_ROOT", raising=False)
    rc, _, err = run_cli(["data", "download", "vqa-rad", "--url-base", "http://127.0.0.1:9"], capsys)
    assert rc == 2 and "no data root given" in err and "UMDBENCH_DATA_ROOT=DIR" in err and "vqa_rad/" in err


def test_check_generated_dataset_notes_an_unused_data_root(tmp_path, capsys):
    rc, out, err = run_cli(
        [
            "data",
            "check",
            "medsynth",
            "--data-root",
            str(tmp_path),
            "--quick",
            "--option",
            "n_train=3",
            "--option",
            "n_val=2",
            "--option",
            "n_test=2",
        ],
        capsys,
    )
    assert rc == 0, err
    lines = out.splitlines()
    assert (
        lines[0] == f"note: --data-root {tmp_path} is not used: dataset 'medsynth' is generated (needs_root = False)."
    )
    assert lines[1] == "dataset medsynth: (generated: no data folder)" and "train          3 records" in out
