"""umdbench.kit's unit-test helpers build what a stage builds: an encoder from its preset with the
tokenizer's special_ids, and a strategy on it with its resolved preset config."""

import pytest
import torch

from umdbench import kit
from umdbench.api import PretrainStrategy
from umdbench.models.reconstruction import SPECIAL_ID_KEYS
from umdbench.models.tiny_fixtures import synthetic_pairs
from umdbench.plugin import get_registries


def test_the_helpers_are_exported():
    for name in ("build_test_encoder", "build_test_strategy", "special_ids_of", "task_info_for_test"):
        assert name in kit.__all__ and callable(getattr(kit, name))


def test_an_encoder_comes_with_the_special_ids_a_stage_gives_its_strategy():
    encoder, ids = kit.build_test_encoder("coattn", "tiny", image_size=32)
    assert set(ids) == set(SPECIAL_ID_KEYS) and ids["mask"] in ids["all_special"]
    assert encoder.cfg["image_size"] == 32
    again, _ = kit.build_test_encoder("coattn", "tiny", image_size=32)  # seeded: the same weights
    assert all(torch.equal(a, b) for a, b in zip(encoder.state_dict().values(), again.state_dict().values()))


def test_a_strategy_is_built_with_its_preset_options_and_special_ids():
    encoder, ids = kit.build_test_encoder("coattn", "tiny", image_size=32)

    class MaskedOnly(PretrainStrategy):
        name = "masked-only"
        presets = {"tiny": {"ratio": 0.15, "train": dict(kit.PRETRAIN_TRAIN_TINY)}}

        def forward(self, batch):
            ids_, labels = kit.mask_tokens(
                batch["text_ids"], batch["text_mask"], self.cfg["special_ids"], float(self.cfg["ratio"])
            )
            return {"loss_masked": (labels != -100).float().mean()}

    strategy = kit.build_test_strategy(MaskedOnly, encoder, ids, ratio=0.5)
    assert strategy.cfg["ratio"] == 0.5 and strategy.cfg["special_ids"] == ids and strategy.cfg["type"] == "masked-only"
    batch, _ = synthetic_pairs(4, image_size=32, max_len=16)
    assert float(strategy(batch)["loss_masked"]) > 0
    clip = kit.build_test_strategy("pretrain:clip", encoder, ids, registries=get_registries())  # by name
    losses = [v for k, v in clip(batch).items() if k.startswith("loss")]
    assert losses and all(torch.isfinite(v) for v in losses)
    direct = kit.build_test_strategy(
        "tune:direct", encoder, ids, registries=get_registries(), task=kit.task_info_for_test("vqa", ["yes", "no"])
    )
    assert direct.task.num_classes == 2 and direct.task.spec.name == "vqa"


def test_misuse_says_what_to_pass():
    encoder, ids = kit.build_test_encoder("coattn", "tiny", image_size=32)
    with pytest.raises(ValueError, match="task=task_info_for_test"):
        kit.build_test_strategy("tune:direct", encoder, ids, registries=get_registries())
    with pytest.raises(ValueError, match="registries=umdbench.plugin.get_registries"):
        kit.build_test_strategy("tune:direct", encoder, ids)
    with pytest.raises(ValueError, match="registries=umdbench.plugin.get_registries"):
        kit.build_test_encoder("resunet3d")
    with pytest.raises(ValueError, match="'pretrain:NAME' or 'tune:NAME'"):
        kit.build_test_strategy("direct", encoder, ids)
