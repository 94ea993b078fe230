"""``umdbench data download``: fetch a dataset archive, verify its sha256, unpack it.

No dataset here has a stable, direct, checksum-pinned public download URL (they sit behind OSF
pages, Google Drive, Zenodo records, e-mail requests or per-image PMC fetch scripts), so the
command works against a *mirror*: ``--url-base URL`` is a folder (http(s):// or file://) holding

* ``SHA256SUMS`` -- lines ``<hex>  <file name>`` (``sha256sum`` format), and
* one archive per dataset named after its data folder: ``vqa_rad.tar.gz`` (or ``.tgz``, ``.tar``,
  ``.zip``) whose content is that folder in the release layout (optionally inside a top folder of
  the same name).

The archive is streamed to a temporary file, its sha256 compared with ``SHA256SUMS`` (or with
``--sha256 HEX`` when given, which takes precedence), and only then unpacked (path traversal and
links outside the target refused) into ``<data-root>/<folder>``. Where to obtain each dataset by
hand is in :data:`HOMEPAGES` and docs/datasets.md.

Import-light: only the standard library and :mod:`umdbench.errors`.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath

from umdbench.errors import UmdbenchError

__all__ = ["HOMEPAGES", "DownloadError", "download_dataset", "read_sha256sums", "ARCHIVE_SUFFIXES"]

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")

HOMEPAGES = {
    "vqa-rad": "https://osf.io/89kps/ (OSF release, CC0); MEVF split: github.com/aioz-ai/MICCAI19-MedVQA data_RAD/",
    "slake": "https://www.med-vqa.com/slake/ (SLAKE 1.0, CC BY 4.0)",
    "vqa-med-2019": "https://zenodo.org/records/10499039 and github.com/abachaa/VQA-Med-2019 (test answers)",
    "roco": "https://github.com/razorx89/roco-dataset (captions; images via its scripts/fetch.py)",
    "medicat": "https://github.com/allenai/medicat (release on request; sample/ in the repository)",
    "melinda": "on request from the MELINDA authors (Wu et al., AAAI 2021)",
}


class DownloadError(UmdbenchError):
    """Download failed; the message names the URL/file and the fix."""


def _open(url: str, timeout: float = 60.0):
    try:
        return urllib.request.urlopen(url, timeout=timeout)  # noqa: S310 (user-chosen mirror)
    except urllib.error.HTTPError as exc:
        raise DownloadError(
            f"{url}: HTTP {exc.code} {exc.reason}; fix: check --url-base and that the mirror has this file"
        ) from exc
    except (urllib.error.URLError, OSError) as exc:
        raise DownloadError(
            f"{url}: cannot connect ({getattr(exc, 'reason', exc)}); fix: check --url-base and the network"
        ) from exc


def read_sha256sums(text: str) -> dict[str, str]:
    sums = {}
    for line in text.splitlines():
        parts = line.strip().split()
        if len(parts) >= 2 and len(parts[0]) == 64:
            sums[parts[-1].lstrip("*")] = parts[0].lower()
    return sums


def _fetch(url: str, dest: Path) -> str:
    """Stream ``url`` into ``dest``; return its sha256."""
    h = hashlib.sha256()
    with _open(url) as resp, open(dest, "wb") as out:
        while True:
            block = resp.read(1 << 20)
            if not block:
                break
            h.update(block)
            out.write(block)
    return h.hexdigest()


def _safe_extract(archive: Path, target: Path) -> None:
    target = target.resolve()

    def inside(name: str) -> Path:
        p = PurePosixPath(name)
        if p.is_absolute() or ".." in p.parts:
            raise DownloadError(f"{archive.name}: member {name!r} points outside the target folder; refusing to unpack")
        return target.joinpath(*p.parts)

    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                inside(info.filename)
            zf.extractall(target)
        return
    try:
        tf = tarfile.open(archive)
    except tarfile.TarError as exc:
        raise DownloadError(f"{archive.name}: not a zip or tar archive ({exc}); fix: check the mirror file") from exc
    with tf:
        for m in tf.getmembers():
            inside(m.name)
            if not (m.isfile() or m.isdir()):
                raise DownloadError(f"{archive.name}: member {m.name!r} is a link or special file; refusing to unpack")
        tf.extractall(target, filter="data")


def download_dataset(
    name: str, subdir: str, data_root: str | Path, url_base: str, sha256: str | None = None, log=print
) -> Path:
    """Fetch ``<url_base>/<subdir>.<ext>``, verify, unpack into ``data_root/subdir``; returns that folder."""
    base = url_base.rstrip("/")
    sums: dict[str, str] = {}
    try:
        with _open(f"{base}/SHA256SUMS") as resp:
            sums = read_sha256sums(resp.read().decode("utf-8", "replace"))
    except DownloadError:
        if sha256 is None:
            raise DownloadError(
                f"{base}/SHA256SUMS: not available and no --sha256 given, so the archive of "
                f"{name!r} cannot be verified; fix: add SHA256SUMS to the mirror or pass --sha256 HEX"
            )
    candidates = [f"{subdir}{ext}" for ext in ARCHIVE_SUFFIXES]
    listed = [c for c in candidates if c in sums]
    archive_name = listed[0] if listed else candidates[0]
    expected = (sha256 or sums.get(archive_name) or "").lower()
    if not expected:
        raise DownloadError(
            f"{base}/SHA256SUMS lists none of {candidates} and no --sha256 was given; fix: add the "
            f"archive's checksum to SHA256SUMS or pass --sha256 HEX"
        )
    root = Path(data_root)
    root.mkdir(parents=True, exist_ok=True)
    dest = root / subdir
    with tempfile.TemporaryDirectory(prefix=".umdbench-download-", dir=root) as tmp:
        tmp_path = Path(tmp)
        archive = tmp_path / archive_name
        url = f"{base}/{archive_name}"
        log(f"fetching {url}")
        got = _fetch(url, archive)
        if got != expected:
            raise DownloadError(
                f"{archive_name}: sha256 mismatch (expected {expected}, got {got}); the file is "
                f"damaged or not the release; it was deleted. fix: re-run, or check the mirror and "
                f"the checksum"
            )
        log(f"sha256 ok: {got}")
        staging = tmp_path / "unpacked"
        staging.mkdir()
        _safe_extract(archive, staging)
        entries = list(staging.iterdir())
        src = entries[0] if len(entries) == 1 and entries[0].is_dir() and entries[0].name == subdir else staging
        dest.mkdir(parents=True, exist_ok=True)
        for dirpath, _dirnames, filenames in os.walk(src):
            rel = Path(dirpath).relative_to(src)
            (dest / rel).mkdir(parents=True, exist_ok=True)
            for fn in filenames:
                os.replace(Path(dirpath) / fn, dest / rel / fn)
        shutil.rmtree(staging, ignore_errors=True)
    log(f"unpacked into {dest}")
    return dest
