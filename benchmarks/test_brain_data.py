"""3-D data loading (umdbench-brain): first epoch (NIfTI decode + released pre-processing + cache
write) vs the no-cache reference vs a cached epoch, through ``SegmentationTask``'s dataset on a
generated BraTS 2021-layout fixture.

``UMDBENCH_BENCH_3D_STUDIES`` (default 4) studies of ``UMDBENCH_BENCH_3D_GRID`` voxels (default
``160,160,104`` at ``UMDBENCH_BENCH_3D_SPACING`` = 1.5 mm, which resamples to BraTS's 240x240x155 at
1 mm). Skipped when umdbench-brain is not installed.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

pytest.importorskip("umdbench_brain")

from .cases_3d import MODALITIES, write_brats_fixture  # noqa: E402

STUDIES = int(os.environ.get("UMDBENCH_BENCH_3D_STUDIES", "4"))
GRID = tuple(int(v) for v in os.environ.get("UMDBENCH_BENCH_3D_GRID", "160,160,104").split(","))
SPACING = float(os.environ.get("UMDBENCH_BENCH_3D_SPACING", "1.5"))
ROI = 96


@pytest.fixture(scope="module")
def fixture_root():
    d = Path(tempfile.mkdtemp(prefix="umdbench-bench-brats-"))
    write_brats_fixture(d, STUDIES, GRID, SPACING)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _dataset(root: Path, cache: Path | None):
    from umdbench.api import DataContext
    from umdbench_brain.brats import BraTS2021
    from umdbench_brain.tasks import SegmentationTask

    ds = BraTS2021(root=root / "brats2021")
    records = [r for s in ds.splits for r in ds.records(s)]
    ctx = DataContext(
        model_cfg={"modalities": MODALITIES, "roi_size": ROI},
        stage_cfg={},
        tokenizer=None,
        label_names=ds.label_names(),
        seed=0,
        cache_dir=cache,
    )
    return SegmentationTask().build_dataset(records, ctx, training=True)


def _epoch(dataset):
    for i in range(len(dataset)):
        dataset[i]


def _info(benchmark, variant):
    benchmark.group = "data-3d"
    benchmark.extra_info.update(
        {
            "kind": "data_3d",
            "variant": variant,
            "studies": STUDIES,
            "grid": f"{'x'.join(map(str, GRID))} @ {SPACING} mm",
            "roi": ROI,
            "load_avg_1m": os.getloadavg()[0],
        }
    )


def test_brain_data_first_epoch(benchmark, fixture_root, tmp_path):
    dirs = iter(range(1000))

    def setup():
        return (_dataset(fixture_root, tmp_path / str(next(dirs))),), {}

    benchmark.pedantic(_epoch, setup=setup, rounds=2, iterations=1)
    _info(benchmark, "first epoch (decode + pre-process + cache write)")


def test_brain_data_nocache(benchmark, fixture_root):
    benchmark.pedantic(_epoch, args=(_dataset(fixture_root, None),), rounds=2, iterations=1)
    _info(benchmark, "reference: decode + pre-process, no cache")


def test_brain_data_cached(benchmark, fixture_root, tmp_path):
    dataset = _dataset(fixture_root, tmp_path)
    _epoch(dataset)  # fill
    benchmark.pedantic(_epoch, args=(dataset,), rounds=5, iterations=1, warmup_rounds=1)
    assert dataset.studies.hits >= 5 * len(dataset) and dataset.studies.misses == len(dataset)
    _info(benchmark, "cached epoch")
