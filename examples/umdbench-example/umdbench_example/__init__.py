"""umdbench-example: one package, four plugin kinds, public modules only."""

from umdbench.hookspecs import hookimpl

__version__ = "0.1.0"

SUITE = {
    "title": "Example: MLM-only pre-training and bias-only tuning on shapes-vqa (accuracy %)",
    "datasets": ["shapes-vqa"],
    "metrics": ["open", "closed", "overall"],
    "rows": [
        {"name": "scratch + direct", "pretrain": "none", "tune": "direct"},
        {"name": "scratch + bias-only", "pretrain": "none", "tune": "bias-only"},
        {"name": "MLM-only + bias-only", "pretrain": "mlm-only", "tune": "bias-only"},
    ],
}


@hookimpl
def umdbench_register(registries):
    registries.pretrain.register_lazy("mlm-only", "umdbench_example.strategies:MLMOnly")
    registries.tune.register_lazy("bias-only", "umdbench_example.strategies:BiasOnly")
    registries.dataset.register_lazy("shapes-vqa", "umdbench_example.shapes:ShapesVQA")
    registries.suite.register("example", SUITE)
