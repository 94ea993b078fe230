"""CLI: start-up without torch, clear errors with non-zero exit."""

import subprocess
import sys

import pytest

from umdbench.cli import main


def test_help_does_not_import_torch():
    code = (
        "import sys; from umdbench.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print('torch' in sys.modules, 'mmengine' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "False False"


@pytest.mark.parametrize(
    "argv,message",
    [
        (["run", "--pretrain", "mrr", "--tune", "direct", "--dataset", "medsynth"], "Did you mean 'mr'"),
        (["run", "--pretrain", "mr", "--tune", "direct", "--dataset", "vqa-radd"], "unknown dataset 'vqa-radd'"),
        (["run", "--pretrain", "mr", "--tune", "gmcoord+gmcoord", "--dataset", "medsynth"], "more than once"),
        (
            ["run", "--pretrain", "mr", "--tune", "direct", "--dataset", "medsynth", "--cfg-options", "x"],
            "key.path=value",
        ),
    ],
)
def test_bad_input_exits_nonzero_with_message(argv, message, capsys, tmp_path):
    assert main(argv + ["--work-dir", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err


def test_list_shows_builtins(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ("mr", "tdcalib", "gmcoord", "medsynth"):
        assert name in out


def test_plugins_traceback_shows_where_a_plugin_raised(tmp_path, capsys):
    broken = tmp_path / "broken_plugin.py"
    broken.write_text(
        "from umdbench.hookspecs import hookimpl\n\n@hookimpl\ndef umdbench_register(registries):\n"
        "    raise RuntimeError('boom')\n"
    )
    try:
        assert main(["plugins", "--plugin-path", str(broken)]) == 0
        out = capsys.readouterr().out
        assert "FAILED: RuntimeError: boom" in out and "--traceback" in out and "Traceback" not in out
        assert main(["plugins", "--traceback", "--plugin-path", str(broken)]) == 0
        out = capsys.readouterr().out
        assert "Traceback (most recent call last)" in out and f'File "{broken}", line 5, in umdbench_register' in out
    finally:
        from umdbench.plugin import get_registries

        get_registries(reload=True)  # later tests get the registries without the broken plugin


def test_data_root_for_generated_data_is_noted(tmp_path, capsys):
    from umdbench.cli import _note_unused_data_root
    from umdbench.plan.config import CellSpec, resolve
    from umdbench.plugin import get_registries

    config = resolve(CellSpec(pretrain="mr", tune=("direct",), dataset="medsynth"), get_registries()).config
    _note_unused_data_root(str(tmp_path), config)
    out = capsys.readouterr().out
    assert out == (
        f"note: --data-root {tmp_path} is not used: dataset 'medsynth' is generated (needs_root = False) "
        f"and so is the pre-training corpus.\n"
    )
    _note_unused_data_root(None, config)
    config["dataset"]["root"] = str(tmp_path)  # a dataset that reads files uses the root: nothing to note
    _note_unused_data_root(str(tmp_path), config)
    assert capsys.readouterr().out == ""
