"""A package built inside the test adds an encoder, a task type, a dataset and a metric, and
``umdbench run`` goes through them with no edit to the core.

The toy package is a different modality on purpose: each record is a set of named 3-D volumes
(``Record.image`` is a dict), the task type stacks them into ``volume [B,M,S,S,S]`` batches and
standardises them after the device move, and a small 3-D conv encoder feeds the task type's head.
The built-in ``direct`` strategy trains it: it knows nothing of volumes, only the contract.
"""

from __future__ import annotations

import json
import re
import subprocess
import textwrap
from pathlib import Path

import pytest

from tests.support import umdbench_here

REPO = Path(__file__).resolve().parents[2]

TOY_PACKAGE = textwrap.dedent('''
    """A toy multi-parametric volume plugin package (built by tests/e2e/test_extension_points.py)."""
    import logging
    from types import SimpleNamespace

    import numpy as np
    import torch
    import torch.nn.functional as F
    from mmengine.evaluator import BaseMetric
    from torch import nn

    from umdbench.api import CheckReport, DatasetPlugin, Encoder, Record, TaskType
    from umdbench.hookspecs import hookimpl

    __version__ = "0.1"
    MODALITIES = ("t1", "t2")
    SIZE = 8


    class ToyVolumeEncoder(Encoder):
        name = "toy-volnet"
        presets = {"tiny": {"channels": len(MODALITIES), "width": 8, "hidden": 16}}

        def __init__(self, cfg):
            super().__init__()
            logging.getLogger(__name__).info("toy encoder built with width %s", cfg["width"])
            self.hidden_size = int(cfg["hidden"])
            self.net = nn.Sequential(nn.Conv3d(cfg["channels"], cfg["width"], 3, padding=1), nn.ReLU(),
                                     nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(cfg["width"], self.hidden_size))

        def forward(self, volume):
            return self.net(volume)


    class VolumeList(torch.utils.data.Dataset):
        def __init__(self, records):
            self.items = [{"volume": torch.from_numpy(np.stack([r.image[m] for m in MODALITIES])).float(),
                           "label": torch.tensor(r.label), "index": torch.tensor(i)} for i, r in enumerate(records)]

        def __len__(self):
            return len(self.items)

        def __getitem__(self, i):
            return self.items[i]


    class VolumeClassification(TaskType):
        name = "toy-volume-class"
        batch_keys = {"volume": "float [B,M,S,S,S]", "label": "long [B]", "index": "long [B]"}
        prediction_keys = {"logits": "float [B,C]"}
        metric_keys = ("label", "index")
        default_metric = "toy-accuracy"

        def build_dataset(self, records, ctx, *, training):
            return VolumeList(records)

        def preprocess(self, batch):
            v = batch["volume"]
            mean = v.mean(dim=(2, 3, 4), keepdim=True)
            std = v.std(dim=(2, 3, 4), keepdim=True).clamp_min(1e-6)
            batch["volume"] = (v - mean) / std + mean  # keep the per-channel level: it carries the signal
            return batch

        def build_head(self, info, width):
            return nn.Linear(width, info.num_classes)

        def encode(self, encoder, batch, info, cfg, *, training):
            return SimpleNamespace(feat=encoder(batch["volume"]), target=batch.get("label"))

        def logits(self, head, features, info):
            return head(features.feat)

        def loss(self, info, logits, target, cfg):
            return F.cross_entropy(logits, target)

        def predict(self, info, logits):
            return {"logits": logits}


    class ToyAccuracy(BaseMetric):
        """Accuracy, and recall of the class named "lesion" (read from the dataset's label names; each
        sample's record is looked up by its index to show per-example metadata reaches metrics)."""

        def process(self, data_batch, data_samples):
            lesion = self.dataset_meta["label_names"].index("lesion")
            records = self.dataset_meta["records"]
            for out in data_samples:
                pred, label = out["logits"].argmax(-1), out["label"]
                assert [records[i].label for i in out["index"].tolist()] == label.tolist()
                self.results.append(((pred == label).sum().item(), len(label),
                                     ((pred == lesion) & (label == lesion)).sum().item(),
                                     (label == lesion).sum().item()))

        def compute_metrics(self, results):
            total = [sum(r[i] for r in results) for i in range(4)]
            return {"accuracy": 100.0 * total[0] / total[1], "lesion_recall": 100.0 * total[2] / max(total[3], 1)}


    class ToyVolumes(DatasetPlugin):
        name = "toy-vols"
        task = "toy-volume-class"
        encoder = "toy-volnet"
        needs_root = False

        def records(self, split):
            rng = np.random.default_rng({"train": 0, "val": 1, "test": 2}[split])
            out = []
            for i in range({"train": 96, "val": 16, "test": 40}[split]):
                label = i % 2
                vols = {m: rng.normal(0.0, 1.0, (SIZE,) * 3).astype("float32") for m in MODALITIES}
                vols["t2"][2:6, 2:6, 2:6] += 1.5 * label  # a lesion brightens T2 only
                out.append(Record(uid=f"{split}-{i}", image=vols, text="", label=label))
            return out

        def label_names(self):
            return ["healthy", "lesion"]

        def fingerprint(self):
            return "toy-vols-v1"

        def check(self, deep=False):
            return CheckReport(self.name, None, {s: len(self.records(s)) for s in self.splits})


    @hookimpl
    def umdbench_register(registries):
        registries.encoder.register("toy-volnet", ToyVolumeEncoder)
        registries.task.register("toy-volume-class", VolumeClassification)
        registries.dataset.register("toy-vols", ToyVolumes)
        registries.metric.register("toy-accuracy", ToyAccuracy)
''')


@pytest.fixture(scope="module")
def toy_site(tmp_path_factory) -> Path:
    """A site folder holding the toy package and its dist-info (entry point ``umdbench: toyvol``)."""
    site = tmp_path_factory.mktemp("site")
    dist = site / "toyvol_umdbench-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: toyvol-umdbench\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[umdbench]\ntoyvol = toyvol_umdbench\n")
    (site / "toyvol_umdbench.py").write_text(TOY_PACKAGE)
    return site


def cli(args: list[str], site: Path, cwd: Path) -> subprocess.CompletedProcess:
    # in this process, with the site first on sys.path (as PYTHONPATH would put it): what is under
    # test is entry-point discovery and the run, not a process start-up
    return umdbench_here(args, cwd=cwd, path=(site,))


def test_toy_package_registers_an_encoder_and_a_task_type(toy_site, tmp_path):
    out = cli(["list"], toy_site, tmp_path)
    assert out.returncode == 0, out.stderr
    for kind, name in (("encoder", "toy-volnet"), ("task type", "toy-volume-class"), ("dataset", "toy-vols")):
        section = out.stdout.split(f"{kind} (")[1]
        assert re.search(rf"^  {re.escape(name)} +entry point", section, re.M), out.stdout


@pytest.mark.slow
def test_run_goes_through_a_new_encoder_and_task_type(toy_site, tmp_path):
    work = tmp_path / "wd"
    args = [
        "run",
        "--pretrain",
        "none",
        "--tune",
        "direct",
        "--dataset",
        "toy-vols",
        "--work-dir",
        str(work),
        "--cfg-options",
        "tune.0.train.max_iters=60",
        "tune.0.train.batch_size=16",
        "tune.0.train.lr=3e-3",
        "data.num_workers=0",
    ]
    out = cli(args, toy_site, tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    accuracy = float(
        re.search(r"result: none / direct / toy-vols seed 0: accuracy=([\d.]+)  lesion_recall=", out.stdout).group(1)
    )
    # chance is 50 %: the lesion is visible in one modality, and the toy model must find it
    assert accuracy >= 80.0, out.stdout
    config = json.loads(next((work / "runs").glob("*/config.json")).read_text())["config"]
    assert config["model"]["type"] == "toy-volnet" and config["cell"]["dataset"] == "toy-vols"
    # the plugin's own logger reaches the console and the stage's log
    assert "[toyvol_umdbench] INFO: toy encoder built with width 8" in out.stdout
    (stage_log,) = (work / "stages").glob("tune-direct-*/train/*/*.log")
    assert "toy encoder built with width 8" in stage_log.read_text()
    # the row names the package behind each plugin it ran
    plugins = json.loads(next((work / "runs").glob("*/result.json")).read_text())["plugins"]
    assert plugins["encoder:toy-volnet"] == plugins["task:toy-volume-class"] == "toyvol-umdbench 0.1"
    assert plugins["tune:direct"].startswith("umdbench ")
    # a second run is served from the store, like every other cell
    again = cli(args, toy_site, tmp_path)
    assert again.returncode == 0 and "result already in the store" in again.stdout
