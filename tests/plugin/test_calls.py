"""An exception raised by a plugin's own code while a stage trains or is evaluated is one paragraph
naming the plugin, its package, the hook and the plugin's own line, exit 2; the stage stays
resumable. A forward() without a loss and a metric that returns no number are caught the same way."""

from __future__ import annotations

import textwrap

import pytest

from umdbench.cli import main

PLUGIN = textwrap.dedent("""
    import torch
    from mmengine.evaluator import BaseMetric

    from umdbench.hookspecs import hookimpl
    from umdbench.kit import FINETUNE_TRAIN_TINY, SupervisedTune
    from umdbench_plugins.datasets.medsynth import MedSynthVQA


    class Base(SupervisedTune):
        presets = {"tiny": {"loss": "ce", "pooling": "pooler", "train": dict(FINETUNE_TRAIN_TINY)}}


    class NoLoss(Base):
        name = "no-loss"

        def forward(self, batch):
            out = super().forward(batch)
            return {"acc": out["loss_task"].detach()}


    class BrokenInit(Base):
        name = "broken-init"

        def __init__(self, encoder, cfg, task):
            super().__init__(encoder, cfg, task)
            self.width = self.encoder.no_such_width  # AttributeError in the author's code


    class BrokenHook(Base):
        name = "broken-hook"

        def modulate_gradients(self):
            scale = {"image": 1.0}
            return {"k": scale["text"]}


    class Boom(BaseMetric):
        def process(self, data_batch, data_samples):
            self.results.append(len(data_samples))

        def compute_metrics(self, results):
            return {"overall": 1.0 / (sum(results) - sum(results))}


    class Text(BaseMetric):
        def process(self, data_batch, data_samples):
            self.results.append(len(data_samples))

        def compute_metrics(self, results):
            return {"overall": "high"}


    class BoomData(MedSynthVQA):
        name = "boom-data"
        metric = "boom"


    class TextData(MedSynthVQA):
        name = "text-data"
        metric = "text-metric"


    @hookimpl
    def umdbench_register(registries):
        registries.tune.register("no-loss", NoLoss)
        registries.tune.register("broken-init", BrokenInit)
        registries.tune.register("broken-hook", BrokenHook)
        registries.metric.register("boom", Boom)
        registries.metric.register("text-metric", Text)
        registries.dataset.register("boom-data", BoomData)
        registries.dataset.register("text-data", TextData)
""")

FAST = [
    "--cfg-options",
    "tune.0.train.max_iters=2",
    "tune.0.train.batch_size=4",
    "data.num_workers=0",
    "dataset.options.n_train=8",
    "dataset.options.n_val=4",
    "dataset.options.n_test=4",
]


@pytest.fixture
def plugin_file(tmp_path):
    path = tmp_path / "author_plugin.py"
    path.write_text(PLUGIN)
    return str(path)


def run(tmp_path, plugin_file, tune, dataset="medsynth"):
    return main(
        [
            "run",
            "--pretrain",
            "none",
            "--tune",
            tune,
            "--dataset",
            dataset,
            "--work-dir",
            str(tmp_path / "wd"),
            "--plugin-path",
            plugin_file,
            *FAST,
        ]
    )


def one_paragraph_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("umdbench: error:") and "\n" not in err and "Traceback" not in err, err
    return err


@pytest.mark.parametrize(
    "tune,hook,line",
    [
        ("broken-init", "__init__", "self.width = self.encoder.no_such_width"),
        ("broken-hook", "modulate_gradients", 'return {"k": scale["text"]}'),
    ],
)
def test_an_exception_in_a_strategys_code_names_the_plugin_hook_and_line(
    tmp_path, plugin_file, capsys, tune, hook, line
):
    assert run(tmp_path, plugin_file, tune) == 2
    err = one_paragraph_error(capsys)
    assert f"tuning strategy {tune!r}" in err and "author_plugin.py" in err and f"{hook}()" in err
    assert line in err and "resumes" in err


def test_a_forward_without_a_loss_is_named(tmp_path, plugin_file, capsys):
    assert run(tmp_path, plugin_file, "no-loss") == 2
    err = one_paragraph_error(capsys)
    assert "NoLoss" in err and "'loss*' tensor" in err and "['acc']" in err
    # the stage raised inside the step whose FLOPs were being counted: the counter is off again
    from torch.utils._python_dispatch import _get_current_dispatch_mode_stack

    assert _get_current_dispatch_mode_stack() == []


def test_a_metric_that_raises_is_named_and_nothing_is_stored(tmp_path, plugin_file, capsys):
    assert run(tmp_path, plugin_file, "direct", dataset="boom-data") == 2
    err = one_paragraph_error(capsys)
    assert "metric 'boom'" in err and "compute_metrics()" in err and "ZeroDivisionError" in err
    from umdbench.results.store import ResultsStore

    assert ResultsStore(tmp_path / "wd" / "results.sqlite").rows() == []
    # the trained stage is kept: after the fix only the evaluation runs again
    assert list((tmp_path / "wd" / "stages").glob("tune-direct-*/model.safetensors"))


def test_a_metric_value_that_is_not_a_number_is_refused(tmp_path, plugin_file, capsys):
    assert run(tmp_path, plugin_file, "direct", dataset="text-data") == 2
    err = one_paragraph_error(capsys)
    assert "metric 'text-metric'" in err and "not numbers" in err and "'high'" in err


OLD_CHECK = textwrap.dedent("""
    from umdbench.hookspecs import hookimpl
    from umdbench_plugins.datasets.medsynth import MedSynthVQA


    class OldCheck(MedSynthVQA):
        name = "old-check"

        def check(self):
            return super().check(deep=False)


    @hookimpl
    def umdbench_register(registries):
        registries.dataset.register("old-check", OldCheck)
""")


def test_a_dataset_check_without_deep_is_named_and_plugin_path_follows_the_dataset(tmp_path, capsys):
    path = tmp_path / "old_check.py"
    path.write_text(OLD_CHECK)
    assert main(["data", "check", "old-check", "--plugin-path", str(path)]) == 2  # after the name, as in `run`
    err = one_paragraph_error(capsys)
    assert "dataset 'old-check'" in err and "without the `deep` argument" in err and "OldCheck.check" in err
    assert main(["data", "--plugin-path", str(path), "check", "medsynth", "--quick"]) == 0
