"""The work dir's layout: the name of every file and folder umdbench keeps under ``--work-dir``, and
the few paths a command needs without a :class:`~umdbench.run.workspace.Workspace`.

Layout::

    stages/<kind>-<name>-<key16>/    one per stage key (the artifact cache)
        stage.json                   resolved stage config + every input of its key
        train/                       mmengine work dir: logs, resumable checkpoints, tracking
            evidence.json            the first optimiser steps, recorded while it trains (umdbench.run.evidence)
        model.safetensors            the artifact handed downstream
        artifact.json                written last: marks the stage finished (sha256, wall time)
        ddp-request.json             what a torchrun job of the stage reads (multi-process stages)
        stage.lock                   held while a process trains the stage (others wait, then reuse)
    runs/<cell-key16>/               one per cell
        config.json                  the run's resolved config and plan
        eval/                        mmengine work dir of the evaluation
        predictions.npz              per-example predictions of the evaluation (the row holds its sha256)
        result.json                  the stored row, without the config
        cell.lock                    held while a process evaluates and stores the cell
    image_cache/                     decoded, resized images shared by every stage
    results.sqlite                   one row per finished cell, and suite membership
    reference-points.json            no-image baselines per dataset split (`umdbench baselines --work-dir`)
    overlap.json                     the train/test overlap report (`umdbench overlap`)
    plan-cache.json                  whole dry-run plans, replayed without torch (umdbench.cli.plancache)
    planning-cache.json              which images of a split are missing (umdbench.data.catalog)
    .adopt-*/                        scratch work dirs of `umdbench adopt`, removed when it ends

This module imports nothing of umdbench (nor numpy, which the Workspace's store pulls in), so the
CLI and a dry-run replay can name these paths cheaply. The Workspace builds every path from these
names; nothing else in umdbench spells them.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = [
    "ADOPT_SCRATCH_PREFIX",
    "CELL_LOCK_FILE",
    "DDP_REQUEST_FILE",
    "EVAL_DIR",
    "EVIDENCE_FILE",
    "IMAGE_CACHE_DIR",
    "MARKER_FILE",
    "OVERLAP_REPORT_FILE",
    "PLANNING_CACHE_FILE",
    "PLAN_CACHE_FILE",
    "PREDICTIONS_FILE",
    "REFERENCE_POINTS_FILE",
    "RESULT_FILE",
    "RUNS_DIR",
    "RUN_CONFIG_FILE",
    "STAGES_DIR",
    "STAGE_INPUTS_FILE",
    "STAGE_LOCK_FILE",
    "STORE_FILE",
    "TRAIN_DIR",
    "WEIGHTS_FILE",
    "overlap_report_path",
    "plan_cache_path",
    "planning_cache_path",
    "reference_points_path",
    "stages_dir",
    "store_path",
]

# -- the work dir's top level ----------------------------------------------------------------------
STORE_FILE = "results.sqlite"  # one row per finished cell
STAGES_DIR = "stages"  # one folder per trained stage
RUNS_DIR = "runs"  # one folder per cell
IMAGE_CACHE_DIR = "image_cache"  # decoded, resized images
REFERENCE_POINTS_FILE = "reference-points.json"  # no-image baselines (umdbench.results)
# the overlap report; umdbench.data.overlap.REPORT_FILE spells it too (the boards read it through that
# layer, below this one; tests/run/test_layout.py holds the two equal)
OVERLAP_REPORT_FILE = "overlap.json"
PLAN_CACHE_FILE = "plan-cache.json"  # the dry-run replay cache (umdbench.cli.plancache)
PLANNING_CACHE_FILE = "planning-cache.json"  # the data catalog's planning results (umdbench.data.catalog)
ADOPT_SCRATCH_PREFIX = ".adopt-"  # temporary work dirs of `umdbench adopt` (umdbench.run.stage_adoption)

# -- in a stage folder -----------------------------------------------------------------------------
STAGE_INPUTS_FILE = "stage.json"  # what the stage's key was computed from
TRAIN_DIR = "train"  # mmengine's work dir of the stage
EVIDENCE_FILE = "evidence.json"  # in TRAIN_DIR: the first optimiser steps
WEIGHTS_FILE = "model.safetensors"  # the artifact
MARKER_FILE = "artifact.json"  # written last: the stage is finished
DDP_REQUEST_FILE = "ddp-request.json"  # what a torchrun job of the stage reads
STAGE_LOCK_FILE = "stage.lock"

# -- in a run (cell) folder ------------------------------------------------------------------------
RUN_CONFIG_FILE = "config.json"
EVAL_DIR = "eval"  # mmengine's work dir of the evaluation
PREDICTIONS_FILE = "predictions.npz"
RESULT_FILE = "result.json"
CELL_LOCK_FILE = "cell.lock"


# -- paths without a Workspace (the CLI's and the dry-run replay's) ----------------------------------
def store_path(work_dir: str | os.PathLike) -> Path:
    """The results store."""
    return Path(work_dir) / STORE_FILE


def stages_dir(work_dir: str | os.PathLike) -> Path:
    """The folder of the trained stages."""
    return Path(work_dir) / STAGES_DIR


def reference_points_path(work_dir: str | os.PathLike) -> Path:
    """The no-image reference points of the datasets evaluated here."""
    return Path(work_dir) / REFERENCE_POINTS_FILE


def overlap_report_path(work_dir: str | os.PathLike) -> Path:
    """The train/test overlap report (``umdbench overlap``)."""
    return Path(work_dir) / OVERLAP_REPORT_FILE


def plan_cache_path(work_dir: str | os.PathLike) -> Path:
    """The dry-run replay cache."""
    return Path(work_dir) / PLAN_CACHE_FILE


def planning_cache_path(work_dir: str | os.PathLike) -> Path:
    """The data catalog's on-disk planning cache (which images of a split are missing)."""
    return Path(work_dir) / PLANNING_CACHE_FILE
