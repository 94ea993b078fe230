"""Errors raised in plugin code reach the user as one paragraph that names the plugin, exit 2."""

from __future__ import annotations

import textwrap

import pytest

from umdbench.cli import main

PLUGIN = textwrap.dedent("""
    from umdbench.api import Record
    from umdbench.hookspecs import hookimpl
    from umdbench.kit import FINETUNE_TRAIN_TINY, SupervisedTune
    from umdbench_plugins.datasets.medsynth import MedSynthVQA


    class TinyOnly(SupervisedTune):
        name = "tiny-only"
        presets = {"tiny": {"loss": "ce", "pooling": "pooler", "train": dict(FINETUNE_TRAIN_TINY)}}


    class Picky(SupervisedTune):
        name = "picky"
        presets = {"tiny": {"loss": "ce", "pooling": "pooler", "train": dict(FINETUNE_TRAIN_TINY), "width": 3}}

        def __init__(self, encoder, cfg, task):
            super().__init__(encoder, cfg, task)
            if cfg["width"] % 2:
                raise ValueError(f"width must be even, got {cfg['width']}")


    class NoAnswerType(MedSynthVQA):
        name = "no-answer-type"

        def records(self, split):
            import copy

            out = [copy.copy(r) for r in super().records(split)]  # never the shared cached records
            out[1].answer_type = None
            return out


    @hookimpl
    def umdbench_register(registries):
        registries.tune.register("tiny-only", TinyOnly)
        registries.tune.register("picky", Picky)
        registries.dataset.register("no-answer-type", NoAnswerType)
""")

FAST = ["--cfg-options", "tune.0.train.max_iters=2", "data.num_workers=0"]


@pytest.fixture
def plugin_file(tmp_path):
    path = tmp_path / "my_plugin.py"
    path.write_text(PLUGIN)
    return str(path)


def one_paragraph_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("umdbench: error:") and "\n" not in err and "Traceback" not in err, err
    return err


def test_bad_option_of_a_builtin_strategy_fails_at_planning(tmp_path, capsys):
    code = main(
        [
            "run",
            "--pretrain",
            "none",
            "--tune",
            "gmcoord",
            "--dataset",
            "medsynth",
            "--work-dir",
            str(tmp_path),
            "--cfg-options",
            "tune.0.variant=bogus",
            "--dry-run",
        ]
    )
    assert code == 2
    err = one_paragraph_error(capsys)
    assert "tuning strategy 'gmcoord' (from registry.toml (builtin))" in err and "variant must be one of" in err
    assert not (tmp_path / "stages").exists()


def test_missing_preset_names_the_plugin(tmp_path, plugin_file, capsys):
    code = main(
        [
            "run",
            "--plugin-path",
            plugin_file,
            "--pretrain",
            "none",
            "--tune",
            "tiny-only",
            "--dataset",
            "medsynth",
            "--preset",
            "paper",
            "--work-dir",
            str(tmp_path),
            "--dry-run",
        ]
    )
    assert code == 2
    err = one_paragraph_error(capsys)
    assert "'tiny-only'" in err and "my_plugin" in err and "no preset 'paper'" in err


def test_value_error_in_a_strategy_constructor_names_the_plugin(tmp_path, plugin_file, capsys):
    code = main(
        [
            "run",
            "--plugin-path",
            plugin_file,
            "--pretrain",
            "none",
            "--tune",
            "picky",
            "--dataset",
            "medsynth",
            "--work-dir",
            str(tmp_path),
            *FAST,
        ]
    )
    assert code == 2
    err = one_paragraph_error(capsys)
    assert "tuning strategy 'picky'" in err and "width must be even, got 3" in err


def test_vqa_record_without_answer_type_is_a_data_error(tmp_path, plugin_file, capsys):
    code = main(
        [
            "run",
            "--plugin-path",
            plugin_file,
            "--pretrain",
            "none",
            "--tune",
            "direct",
            "--dataset",
            "no-answer-type",
            "--work-dir",
            str(tmp_path),
            *FAST,
        ]
    )
    assert code == 2
    err = one_paragraph_error(capsys)
    assert "answer_type None" in err and "'open' or 'closed'" in err


def test_plugin_path_before_the_subcommand(tmp_path, plugin_file, capsys):
    assert main(["--plugin-path", plugin_file, "list", "--kind", "tune"]) == 0
    assert "picky" in capsys.readouterr().out


def test_a_failing_plugin_path_stops_the_command_and_plugins_reports_it(tmp_path, capsys):
    broken = tmp_path / "broken_plugin.py"
    broken.write_text("raise RuntimeError('boom')\n")
    assert main(["list", "--plugin-path", str(broken)]) == 2  # the user named the file: no silent run without it
    err = one_paragraph_error(capsys)
    assert f"{broken}, line 1: raise RuntimeError('boom')" in err and "RuntimeError: boom" in err
    assert main(["plugins", "--plugin-path", str(broken)]) == 0
    capsys.readouterr()
    assert main(["plugins", "--strict", "--verbose", "--plugin-path", str(broken)]) == 1
    out = capsys.readouterr().out
    assert "RuntimeError: boom" in out and "Traceback" in out
