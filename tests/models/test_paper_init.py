"""The paper preset starts the vision tower from CLIP ViT-B/16; offline without the weights it
fails with one paragraph, or records the opted-into random init (issue 17, part 4)."""

import pytest

from umdbench.cli import main
from umdbench.errors import ConfigError
from umdbench.models.availability import init_deviations
from umdbench.models.presets import ENCODER_PRESETS

RUN = ["run", "--pretrain", "none", "--tune", "direct", "--dataset", "medsynth", "--preset", "paper", "--dry-run"]


@pytest.fixture
def offline_without_clip(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))  # no CLIP, no roberta-base
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))


def test_offline_paper_run_without_clip_is_one_paragraph(offline_without_clip, tmp_path, capsys):
    code = main(RUN + ["--work-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2
    assert "CLIP ViT-B/16" in err and "model.vision.checkpoint=" in err and "model.vision.on_missing=random" in err
    assert err.strip().count("\n") == 0  # one paragraph


def test_opting_into_random_init_is_listed_and_recorded(offline_without_clip, tmp_path, capsys):
    code = main(RUN + ["--work-dir", str(tmp_path), "--cfg-options", "model.vision.on_missing=random"])
    out = capsys.readouterr().out
    assert code == 0
    assert "initialisation: vision random init (CLIP ViT-B/16 not available offline" in out
    assert "deviation: model (coattn): vision tower: random init instead of the paper's CLIP ViT-B/16" in out
    assert "deviation: model (coattn): text tower: random init" in out and "'roberta-base'" in out


def test_a_local_checkpoint_or_a_reachable_hub_needs_no_deviation(monkeypatch, offline_without_clip):
    paper = ENCODER_PRESETS["paper"]
    with_file = {
        **paper,
        "vision": {**paper["vision"], "checkpoint": "/weights/clip.safetensors"},
        "text": {**paper["text"], "pretrained": "minilm", "tokenizer": "minilm"},
    }
    assert init_deviations(with_file) == []
    with pytest.raises(ConfigError, match="on_missing=random"):
        init_deviations(paper)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "0")
    assert init_deviations(paper) == []  # online: the hub is tried when the encoder is built


def test_availability_imports_neither_timm_nor_the_weight_loaders():
    # every resolved run reads it (a --dry-run, each node of a multi-node run before it hands out
    # work): importing timm there cost ~2 CPU-s per process, through torchvision and torch._dynamo
    import ast
    from pathlib import Path

    import umdbench.models.availability as availability

    tree = ast.parse(Path(availability.__file__).read_text())
    imported = {a.name for n in tree.body if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module or "" for n in tree.body if isinstance(n, ast.ImportFrom)}
    assert not {m for m in imported if m.split(".")[0] in ("timm", "torch", "torchvision") or m == "weights"}
