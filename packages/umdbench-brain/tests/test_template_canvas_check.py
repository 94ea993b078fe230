"""The template canvas of seg-tmpl / cls-tmpl against its parent's, checked on the resolved config
(pretrain.template_canvas and tune.0.template_canvas are separate keys): a mismatch, a parent that
learns no templates, or no parent at all is one paragraph at planning instead of a stop at the first
tuning step after pre-training. The core calls it through its cross-stage hook
(Strategy.check_parent_config) when a run is resolved."""

import pytest

from umdbench.errors import UmdbenchError
from umdbench.plan.config import CellSpec, resolve
from umdbench.plugin import load_plugins
from umdbench_brain.brainmvp import ClsTemplateTune, SegTemplateTune


def resolved(pretrain="brainmvp", tune="seg-tmpl", dataset="brainsynth", preset="tiny", **overrides):
    registries = load_plugins()[0]
    return resolve(
        CellSpec(pretrain, (tune,), dataset, preset=preset, overrides=tuple(overrides.items())), registries
    ).config


@pytest.mark.parametrize("preset", ["tiny", "paper"])
@pytest.mark.parametrize("tune,dataset", [("seg-tmpl", "brainsynth"), ("cls-tmpl", "brainsynth-grade")])
def test_the_presets_agree_with_their_parent(preset, tune, dataset):
    config = resolved(tune=tune, dataset=dataset, preset=preset)
    assert config["pretrain"]["template_canvas"] == config["tune"][0]["template_canvas"]
    cls = SegTemplateTune if tune == "seg-tmpl" else ClsTemplateTune
    cls.check_parent_config(config["tune"][0], config["pretrain"])


def test_a_canvas_mismatch_is_one_paragraph_with_the_fix():
    config = resolved()  # planning refuses the mismatch itself (last test); the check alone, on a copy
    config["pretrain"]["template_canvas"] = [40, 40, 40]
    with pytest.raises(ValueError) as err:
        SegTemplateTune.check_parent_config(config["tune"][0], config["pretrain"])
    text = str(err.value)
    assert (
        "\n" not in text
        and "template_canvas=[48, 48, 48] differs from its parent's pretrain.template_canvas=[40, 40, 40]" in text
    )
    assert "--cfg-options pretrain.template_canvas=[40,40,40] tune.0.template_canvas=[40,40,40]" in text
    # the fix it names resolves and passes
    fixed = resolved(**{"pretrain.template_canvas": [40, 40, 40], "tune.0.template_canvas": [40, 40, 40]})
    SegTemplateTune.check_parent_config(fixed["tune"][0], fixed["pretrain"])


def _unchecked(pretrain="brainmvp", **overrides):
    """The resolved config of a cell planning would refuse: its parent swapped in afterwards."""
    config = resolved()
    config["pretrain"] = resolved(pretrain, tune="seg")["pretrain"] if pretrain != "none" else None
    for key, value in overrides.items():
        config["pretrain"][key.split(".", 1)[1]] = value
    return config


def test_parents_without_templates_are_refused():
    config = _unchecked("mae3d")
    with pytest.raises(ValueError, match="parent pretrain is 'mae3d', which learns none.*`seg` instead"):
        SegTemplateTune.check_parent_config(config["tune"][0], config["pretrain"])
    config = _unchecked("none")
    with pytest.raises(ValueError, match=r"no parent stage \(--pretrain none\)"):
        SegTemplateTune.check_parent_config(config["tune"][0], config["pretrain"])
    config = _unchecked(**{"pretrain.w_template": 0.0, "pretrain.w_contrast": 0.0})
    with pytest.raises(ValueError, match="w_template=0.0, so it trains no template view"):
        SegTemplateTune.check_parent_config(config["tune"][0], config["pretrain"])
    # a *-tmpl parent (tune.1 after tune.0) hands its templates on: its canvas is compared
    tmpl_parent = dict(config["tune"][0], type="seg-tmpl", template_canvas=[32, 32, 32])
    with pytest.raises(ValueError, match=r"parent's tune.0.template_canvas=\[32, 32, 32\]"):
        SegTemplateTune.check_parent_config(config["tune"][0], tmpl_parent, where="tune.1")


def test_planning_refuses_a_mismatch():
    with pytest.raises(UmdbenchError, match="differs from its parent's pretrain.template_canvas"):
        resolved(**{"pretrain.template_canvas": [40, 40, 40]})
