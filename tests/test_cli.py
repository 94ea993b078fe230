"""CLI: start-up without torch, clear errors with non-zero exit."""
import subprocess
import sys

import pytest

from umdbench.cli import main


def test_help_does_not_import_torch():
    code = "import sys; from umdbench.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\nprint('torch' in sys.modules, 'mmengine' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "False False"


@pytest.mark.parametrize("argv,message", [
    (["run", "--pretrain", "mrr", "--tune", "direct", "--dataset", "medsynth"], "Did you mean 'mr'"),
    (["run", "--pretrain", "mr", "--tune", "direct", "--dataset", "vqa-radd"], "unknown dataset 'vqa-radd'"),
    (["run", "--pretrain", "mr", "--tune", "gmcoord+gmcoord", "--dataset", "medsynth"], "more than once"),
    (["run", "--pretrain", "mr", "--tune", "direct", "--dataset", "medsynth", "--cfg-options", "x"], "key.path=value"),
])
def test_bad_input_exits_nonzero_with_message(argv, message, capsys, tmp_path):
    assert main(argv + ["--work-dir", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err


def test_list_shows_builtins(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ("mr", "tdcalib", "gmcoord", "medsynth"):
        assert name in out
