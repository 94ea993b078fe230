"""Checkpoint I/O without unpickling arbitrary objects.

* Stage artifacts (what one stage hands to the next) are safetensors files: tensors only, with a
  sha256 recorded in the stage's ``artifact.json`` and verified before use.
* mmengine's resumable checkpoints are torch pickles; they are loaded with ``weights_only=True``
  and an explicit allow-list. onedl-mmengine would fall back to a full unpickle when that fails;
  :func:`install_safe_loader` replaces its local-file loader so the fallback never happens.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import tempfile
from pathlib import Path

import torch

from umdbench.errors import CheckpointError

_INSTALLED = False


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def safe_globals_allowlist() -> list:
    """Classes an mmengine training checkpoint legitimately contains besides tensors."""
    import collections

    import numpy as np
    from mmengine.logging.history_buffer import HistoryBuffer

    allow = [HistoryBuffer, collections.OrderedDict, collections.defaultdict, np.dtype, np.ndarray]
    allow += [type(np.dtype(t)) for t in ("float64", "float32", "int64", "int32", "bool")]
    try:  # numpy scalars are pickled through this reconstructor
        from numpy._core.multiarray import _reconstruct, scalar
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct, scalar
    allow += [_reconstruct, scalar]
    try:
        from mmengine.runner.checkpoint import get_torch_safe_globals

        allow += list(get_torch_safe_globals())
    except ImportError:
        pass
    return allow


def safe_torch_load(path: str | Path, map_location="cpu"):
    """``torch.load(weights_only=True)`` with the allow-list; a clear error for bad files."""
    path = os.path.expanduser(str(path))
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} can not be found.")
    try:
        with torch.serialization.safe_globals(safe_globals_allowlist()):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"checkpoint {path} holds objects outside umdbench's allow-list, so it was not loaded "
            f"(umdbench never unpickles arbitrary objects). If you trust the file, re-save it as tensors "
            f"only; otherwise delete it. Detail: {exc}"
        ) from exc
    except (RuntimeError, EOFError, OSError) as exc:
        raise CheckpointError(
            f"checkpoint {path} is corrupt or truncated ({type(exc).__name__}: {exc}). Delete it (and its "
            f"'last_checkpoint' pointer in the same folder) to resume from an earlier checkpoint or restart the stage."
        ) from exc


def install_safe_loader() -> None:
    """Route mmengine's local checkpoint loading through :func:`safe_torch_load`."""
    global _INSTALLED
    if _INSTALLED:
        return
    from mmengine.runner.checkpoint import CheckpointLoader

    @CheckpointLoader.register_scheme(prefixes="", force=True)
    def _load_local(filename, map_location):
        return safe_torch_load(filename, map_location=map_location)

    _INSTALLED = True


def save_artifact(state: dict[str, torch.Tensor], path: Path) -> str:
    """Write tensors atomically as safetensors; returns the file's sha256."""
    from safetensors.torch import save_file

    # a uniquely named temporary in the same folder: two writers never share one, and the rename is atomic
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, tmp)
        sha = sha256_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return sha


def load_artifact(path: Path, expected_sha256: str | None = None) -> dict[str, torch.Tensor]:
    """The tensors of a stage artifact, after its sha256 matched ``expected_sha256`` (required)."""
    from safetensors.torch import load_file

    if not path.is_file():
        raise CheckpointError(
            f"cached artifact {path} is missing. Delete its folder {path.parent} to rebuild the stage."
        )
    if not expected_sha256:  # weights are never loaded unverified
        raise CheckpointError(
            f"cached artifact {path} has no recorded sha256 to verify it against (its artifact.json "
            f"is corrupt). Delete the folder {path.parent} and run again to rebuild that stage."
        )
    if sha256_file(path) != expected_sha256:
        raise CheckpointError(
            f"cached artifact {path} does not match the checksum recorded when it was written (corrupt or "
            f"truncated). Delete the folder {path.parent} and run again to rebuild that stage; nothing else "
            f"in the cache or the results store is affected."
        )
    try:
        return load_file(str(path))
    except Exception as exc:
        raise CheckpointError(
            f"cached artifact {path} cannot be read ({exc}). "
            f"Delete the folder {path.parent} and run again to rebuild it."
        ) from exc
