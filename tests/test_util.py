"""umdbench.util: the option grammar, the data root, atomic writes, config hashing."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from umdbench.errors import ConfigError
from umdbench.util import (
    DATA_ROOT_ENV,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    config_hash,
    data_root,
    dataset_root,
    deep_merge,
    parse_option,
)


def test_util_imports_only_the_standard_library():
    code = (
        "import sys, umdbench.util; "
        "print(sorted(m for m in sys.modules if m.startswith(('torch', 'numpy', 'umdbench'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['umdbench', 'umdbench.errors', 'umdbench.util']"


@pytest.mark.parametrize(
    "text,expected",
    [
        ("n_test=100", ("n_test", 100)),
        ("layout=osf", ("layout", "osf")),
        ("a.b=1e-4", ("a.b", 1e-4)),
        ("a=TRUE", ("a", True)),
        ("a=false", ("a", False)),
        ("a=null", ("a", None)),
        ("a=None", ("a", None)),
        ("a=none", ("a", "none")),
        ("a=[1, 2]", ("a", [1, 2])),
        ("a={'k': 1}", ("a", {"k": 1})),
        ("a='x=y'", ("a", "x=y")),
        ("a=/data/x=1", ("a", "/data/x=1")),
        (" a = 3 ", ("a", 3)),
        ("a=''", ("a", "")),
    ],
)
def test_parse_option_values(text, expected):
    assert parse_option(text, "--option") == expected


@pytest.mark.parametrize(
    "bad,message",
    [
        ("novalue", "is not of the form KEY=VALUE"),
        ("=3", "is not of the form"),
        ("a..b=1", "is not of the form"),
        ("a=", "has no value"),
        ("a=[1,", "looks like a literal but does not parse"),
        ("a='x", "does not parse"),
    ],
)
def test_parse_option_errors_name_the_flag(bad, message):
    with pytest.raises(ConfigError, match=message) as info:
        parse_option(bad, "--option")
    assert str(info.value).startswith(f"--option {bad!r}")


class _Rad:
    needs_root = True
    root_subdir = "vqa_rad"


class _Generated:
    needs_root = False
    root_subdir = None


def test_data_root_prefers_the_flag_over_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(DATA_ROOT_ENV, str(tmp_path / "env"))
    assert data_root(str(tmp_path / "flag")) == tmp_path / "flag"
    assert data_root(None) == tmp_path / "env"
    monkeypatch.delenv(DATA_ROOT_ENV)
    assert data_root(None) is None
    assert data_root("~/x") == Path.home() / "x"


def test_dataset_root_messages(tmp_path, monkeypatch):
    monkeypatch.delenv(DATA_ROOT_ENV, raising=False)
    assert dataset_root(_Generated, None, "medsynth") is None
    with pytest.raises(ConfigError, match=f"no data root was given.*--data-root DIR.*{DATA_ROOT_ENV}=DIR"):
        dataset_root(_Rad, None, "vqa-rad")
    with pytest.raises(ConfigError, match=r"data root .*nope \(from --data-root\) does not exist"):
        dataset_root(_Rad, str(tmp_path / "nope"), "vqa-rad")
    monkeypatch.setenv(DATA_ROOT_ENV, str(tmp_path))
    with pytest.raises(ConfigError, match=r"dataset 'vqa-rad': the folder .*vqa_rad does not exist.*data download"):
        dataset_root(_Rad, None, "vqa-rad")
    (tmp_path / "vqa_rad").mkdir()
    assert dataset_root(_Rad, None, "vqa-rad") == str((tmp_path / "vqa_rad").resolve())


def test_atomic_writes_replace_whole_files_and_leave_no_temp(tmp_path):
    path = tmp_path / "out.json"
    atomic_write_json(path, {"b": 1, "a": Path("/x")})
    assert json.loads(path.read_text()) == {"a": "/x", "b": 1}
    atomic_write_text(path, "second")
    assert path.read_text() == "second"
    atomic_write_bytes(tmp_path / "raw", memoryview(b"\x00\x01"))
    assert (tmp_path / "raw").read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json", "raw"]
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # as open() would create it, not mkstemp's 0600


def test_atomic_write_failure_keeps_the_old_file_and_removes_the_temp(tmp_path):
    path = tmp_path / "board.md"
    path.write_text("old")
    with pytest.raises(TypeError):  # fails while writing the temporary file
        atomic_write_bytes(path, "text is not bytes")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["board.md"]


def test_config_hash_ignores_key_order_and_deep_merge_copies():
    assert config_hash({"a": 1, "b": [1, 2]}) == config_hash({"b": [1, 2], "a": 1})
    assert config_hash({"a": 1}) != config_hash({"a": 2})
    base = {"train": {"lr": 1.0, "max_iters": 10}, "tags": [1]}
    merged = deep_merge(base, {"train": {"lr": 0.5}})
    assert merged == {"train": {"lr": 0.5, "max_iters": 10}, "tags": [1]}
    merged["tags"].append(2)
    assert base == {"train": {"lr": 1.0, "max_iters": 10}, "tags": [1]}


def test_portable_paths_writes_the_data_root_as_a_mark_wherever_it_stands(tmp_path, monkeypatch):
    from umdbench.util import portable_paths

    root = tmp_path / "data"
    root.mkdir()
    monkeypatch.chdir(tmp_path)
    cfg = {
        "root": str(root),
        "images": f"{root}/vqa_rad/images",
        "why": f"the folder {root} does not exist",
        "sentence_end": f"nothing under {root}.",
        "sibling": f"{root}base/x",  # a folder whose name only starts with the root's
        "elsewhere": "/opt/weights/model.pt",
        "here": str(tmp_path / "runs" / "a"),
    }
    out = portable_paths(cfg, root)
    assert out["root"] == "<data-root>" and out["images"] == "<data-root>/vqa_rad/images"
    assert out["why"] == "the folder <data-root> does not exist"
    assert out["sentence_end"] == "nothing under <data-root>."
    assert out["sibling"] == "database/x"  # not "<data-root>base/x": relative to the current folder
    assert out["elsewhere"] == ".../model.pt" and out["here"] == "runs/a"
