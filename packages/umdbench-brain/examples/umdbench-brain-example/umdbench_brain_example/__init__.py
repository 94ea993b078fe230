"""umdbench-brain-example: a 3-D pre-training, a metric and a suite, public modules only."""

from umdbench.hookspecs import hookimpl

__version__ = "0.1.0"

SENSITIVITY = ["sensitivity", "sensitivity_wt", "sensitivity_tc", "sensitivity_et"]

SUITE = {
    "title": "Example: rotation pre-training on brainsynth segmentation, voxel sensitivity per region (%)",
    "datasets": ["brainsynth"],
    "metrics": SENSITIVITY,
    "plot": "rows",
    # every cell is scored by this package's metric instead of brainsynth's `dice`; only the
    # evaluation's key changes, so a brainsynth run of the same rows shares every trained stage
    "overrides": {"eval.metric": "region-sensitivity"},
    "rows": [
        {"name": "scratch", "pretrain": "none", "tune": "seg"},
        {"name": "rotation", "pretrain": "rotation3d", "tune": "seg"},
    ],
}


@hookimpl
def umdbench_register(registries):
    registries.pretrain.register_lazy("rotation3d", "umdbench_brain_example.rotation:RotationPretrain")
    registries.metric.register_lazy("region-sensitivity", "umdbench_brain_example.sensitivity:RegionSensitivity")
    registries.suite.register("brain-rotation", SUITE)
