"""Helpers every layer shares, each defined once: canonical JSON and its hash, dict merge, atomic
file writes, the grammar of ``KEY=VALUE`` option flags, and where the data root comes from.

Layer 0: the standard library and :mod:`umdbench.errors` only (no torch), so the CLI, the planner
and the data plugins can all use it without import cost or cycles.
"""

from __future__ import annotations

import ast
import copy
import hashlib
import json
import math
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from umdbench.errors import ConfigError

DATA_ROOT_ENV = "UMDBENCH_DATA_ROOT"


# ---------------------------------------------------------------------------------------------
# configs
# ---------------------------------------------------------------------------------------------
def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def config_hash(obj: Any) -> str:
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()


def deep_merge(base: dict, override: dict) -> dict:
    """Return a copy of ``base`` with ``override`` merged in, recursing into dicts."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


# ---------------------------------------------------------------------------------------------
# atomic writes
# ---------------------------------------------------------------------------------------------
# mkstemp creates files 0600; the written file gets the mode a plain open() would give it.
# Read once: os.umask can only be read by setting it, which is not safe while threads run.
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def atomic_write_bytes(path: str | Path, data: bytes | memoryview) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one, never a part.

    The data goes to a uniquely named temporary file in the same folder (so concurrent writers
    never share one, and the rename stays on one file system), is fsynced, then renamed over
    ``path``. On any failure the temporary file is removed and the error propagates.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """``obj`` as indented JSON with sorted keys (non-JSON values written with ``str``)."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


# ---------------------------------------------------------------------------------------------
# KEY=VALUE option flags (--cfg-options, data check --option, suite overrides)
# ---------------------------------------------------------------------------------------------
_WORDS = {"true": True, "false": False, "null": None}


def is_score(value: Any) -> bool:
    """A metric value that is a number: an int or a finite float. A stored NaN is not a score but
    marks a metric its split leaves undefined (e.g. "closed" on a split without closed questions)."""
    return isinstance(value, (int, float)) and math.isfinite(value)


def parse_option(text: str, flag: str, form: str = "KEY=VALUE (e.g. layout=osf or n_test=100)") -> tuple[str, Any]:
    """Split ``KEY=VALUE`` of option ``flag``; the value is a Python literal when it parses as one.

    Otherwise ``true``/``false``/``null`` (any case) are the booleans and None, and anything else
    is a string. A value that opens like a literal (quote, bracket, brace, parenthesis) but does
    not parse is an error rather than a string, so a typo cannot silently become text. The key is
    a dotted path whose parts are non-empty; ``form`` describes the expected form in the error.
    """
    key, sep, raw = text.partition("=")
    key, raw = key.strip(), raw.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"{flag} {text!r} is not of the form {form}.")
    if not raw:
        raise ConfigError(f"{flag} {text!r} has no value after '='; write {key}='' for an empty string.")
    try:
        return key, ast.literal_eval(raw)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        pass
    if raw[0] in "[{(\"'":
        raise ConfigError(
            f"{flag} {text!r}: the value {raw!r} looks like a literal but does not parse; "
            f"fix its brackets or quotes, or quote the whole value as a string."
        )
    # "none" stays a string: several options take it as a value (e.g. gmcoord noise=none);
    # None (the Python literal) or null is the missing value
    return key, _WORDS.get(raw.lower(), raw)


# ---------------------------------------------------------------------------------------------
# data root
# ---------------------------------------------------------------------------------------------
def _given_root(arg: str | Path | None) -> tuple[Path | None, str]:
    """The data root and where it came from (for messages)."""
    if arg:
        return Path(arg).expanduser(), "--data-root"
    env = os.environ.get(DATA_ROOT_ENV)
    if env:
        return Path(env).expanduser(), DATA_ROOT_ENV
    return None, ""


def data_root(arg: str | Path | None) -> Path | None:
    """``--data-root`` when given, else ``$UMDBENCH_DATA_ROOT``, else None (``~`` expanded)."""
    return _given_root(arg)[0]


def dataset_root(dataset_cls, data_root: str | Path | None, name: str) -> str | None:
    """The folder dataset ``name`` reads (``<data root>/<root_subdir>``), absolute; None for a
    dataset that reads no files (``needs_root = False``). ``data_root`` is ``--data-root`` or None
    (then ``$UMDBENCH_DATA_ROOT``). Raises ConfigError saying which folder is missing and how to fix it.
    """
    if not dataset_cls.needs_root:
        return None
    root, source = _given_root(data_root)
    holds = f"{dataset_cls.root_subdir}/" if dataset_cls.root_subdir else f"the folders dataset {name!r} reads"
    if root is None:
        raise ConfigError(
            f"dataset {name!r} reads files from disk but no data root was given. Pass --data-root DIR "
            f"(the folder that holds {holds}) or set {DATA_ROOT_ENV}=DIR. "
            f"`umdbench data check {name} --data-root DIR` tells what is missing."
        )
    if not root.is_dir():
        raise ConfigError(
            f"data root {root} (from {source}) does not exist. Pass --data-root DIR or set {DATA_ROOT_ENV}=DIR "
            f"to the folder that holds {holds}."
        )
    path = root / dataset_cls.root_subdir if dataset_cls.root_subdir else root
    if not path.is_dir():
        raise ConfigError(
            f"dataset {name!r}: the folder {path} does not exist. Put the release there (see docs/datasets.md), "
            f"point --data-root (or {DATA_ROOT_ENV}) at the folder that holds {holds}, or download it with "
            f"`umdbench data download {name} --data-root DIR --url-base URL` from a mirror."
        )
    return str(path.resolve())


# ---------------------------------------------------------------------------------------------
# mixed precision: which value of ``train.amp`` applies on this machine
# ---------------------------------------------------------------------------------------------
AMP_OFF = (False, None, "off", "fp32", "false", "False", "no")
AMP_ON = (True, "bf16", "on", "true", "True")


def cpu_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX-512 BF16 or AMX), read from the kernel's flags
    so that planning needs no torch import. Without these flags bf16 is emulated and slower than fp32."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


def resolve_amp(value: Any) -> str | bool:
    """The precision a stage with ``train.amp = value`` trains in on this machine: ``"bf16"`` (bf16
    autocast) or ``False`` (fp32). ``"auto"`` means bf16 where it is native: CUDA with bf16 support
    when a GPU is present (stages then train there), else a CPU with AVX-512 BF16 / AMX."""
    if value in AMP_OFF:
        return False
    if value in AMP_ON:
        return "bf16"
    if value != "auto":
        raise ConfigError(f"train.amp must be 'auto', 'bf16' or False, got {value!r}.")
    import torch  # only for "auto" (paper presets), whose strategy classes import torch anyway

    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else False
    return "bf16" if cpu_native_bf16() else False


#: written instead of the data root's own path in stored results (the fingerprint identifies the data)
DATA_ROOT_MARK = "<data-root>"


def portable_paths(obj: Any, root: str | Path | None = None) -> Any:
    """``obj`` (a JSON-like config, or a sentence such as why a dataset is unavailable) as stored
    with a result, free of the machine's paths: the data root ``root`` becomes ``<data-root>``
    wherever it occurs as a path (``<data-root>/vqa_rad``, "the folder <data-root> does not exist"),
    a value that is a path under the current folder becomes relative, and any other absolute path
    keeps only its last part (``.../name``). What identifies the data is its fingerprint, not where
    it was read from."""
    anchors = [str(Path(root).expanduser().resolve())] if root else []
    if root and str(Path(root).expanduser()) != anchors[0]:
        anchors.append(str(Path(root).expanduser()))  # as given, when it is a link
    # the root as a whole path component: "/data" in "/data/x" or "/data." but not in "/database"
    patterns = [re.compile(re.escape(a.rstrip("/")) + r"(?=/|$|[^\w.-]|\.(?:\s|$))") for a in anchors]
    cwd = str(Path.cwd())

    def fix(text: str) -> str:
        for pattern in patterns:
            text = pattern.sub(DATA_ROOT_MARK, text)
        if text.startswith("/") and not any(c.isspace() for c in text):
            if text == cwd or text.startswith(cwd.rstrip("/") + "/"):
                return os.path.relpath(text, cwd)
            return ".../" + Path(text).name
        return text

    if isinstance(obj, dict):
        return {k: portable_paths(v, root) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(portable_paths(v, root) for v in obj)
    return fix(obj) if isinstance(obj, str) else obj
