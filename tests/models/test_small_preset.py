"""The ``small`` preset (issue 17): every UMD strategy has one, the text tower starts from the
packaged pretrained MiniLM-L6 weights, and it trains in bf16 autocast where that is native ("auto",
as the paper preset), fp32 elsewhere."""

import pytest
import torch

from umdbench.models import build_encoder
from umdbench.models.presets import ENCODER_PRESETS
from umdbench.models.text import minilm_dir
from umdbench.plugin import get_registries
from umdbench.run.train_settings import use_amp
from umdbench.util import cpu_native_bf16

UMD_PRETRAIN = ("mr", "mae", "clip", "flip", "m3ae")
UMD_TUNE = ("direct", "tdcalib", "gmcoord", "linear")


@pytest.mark.parametrize("kind,name", [("pretrain", n) for n in UMD_PRETRAIN] + [("tune", n) for n in UMD_TUNE])
def test_every_umd_strategy_has_a_small_preset_in_bf16_where_native(kind, name):
    cls = getattr(get_registries(()), kind).get(name)
    for dataset in (None, "vqa-rad", "slake", "vqa-med-2019"):
        cfg = cls.default_config("small", dataset)
        train = cfg["train"]
        assert int(train["max_iters"]) > 0 and int(train["batch_size"]) > 0
        assert train["amp"] == "auto", f"{name} small must train in bf16 where it is native"
        assert use_amp(train) == cpu_native_bf16() or torch.cuda.is_available()


def test_small_per_dataset_budgets_are_epochs_of_each_training_split():
    from umdbench.kit.recipes import SMALL_FINETUNE_EPOCHS, TRAIN_SIZES

    direct = get_registries(()).tune.get("direct")
    for dataset, epochs in SMALL_FINETUNE_EPOCHS.items():
        train = direct.default_config("small", dataset)["train"]
        steps_per_epoch = -(-TRAIN_SIZES[dataset] // int(train["batch_size"]))
        assert train["max_iters"] == steps_per_epoch * epochs


def test_small_text_tower_is_the_packaged_minilm():
    from safetensors.torch import load_file

    cfg = ENCODER_PRESETS["small"]
    assert cfg["text"]["pretrained"] == "minilm" and cfg["vision"]["pretrained"] is None
    encoder = build_encoder(cfg)
    reference = load_file(str(minilm_dir() / "model.safetensors"))
    ours = encoder.text.state_dict()
    key = next(k for k in ours if k.endswith("embeddings.word_embeddings.weight"))
    ref_key = next(k for k in reference if k.endswith("embeddings.word_embeddings.weight"))
    assert torch.equal(ours[key], reference[ref_key])
    layer = next(k for k in ours if k.endswith("layer.5.output.dense.weight"))
    ref_layer = next(k for k in reference if k.endswith("layer.5.output.dense.weight"))
    assert torch.equal(ours[layer], reference[ref_layer])
    assert encoder.text.config.hidden_size == cfg["text"]["hidden_size"]
    assert encoder.text.config.num_hidden_layers == cfg["text"]["num_layers"]
