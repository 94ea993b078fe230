"""The `small` preset, what the brain suites' boards train on 2 CPU cores: every brain strategy and
encoder offers it, brainsynth cells at small run on uniformer3d (the released stage layout at reduced
widths and depths) while tiny stays on resunet3d, each departure from the released recipe is recorded,
and every brain suite plans at small on uniformer3d (template canvases matching). Nothing trains."""

import pytest

from umdbench.data.catalog import DataCatalog
from umdbench.kit import build_test_encoder
from umdbench.plan.config import CellSpec, resolve
from umdbench.plan.suites import get_suite
from umdbench.plugin import get_registries
from umdbench.sweep.planning import plan_sweep
from umdbench_brain.kit import check_pyramid
from umdbench_brain.plugin import ENTRIES, SUITES

# every plan generates the phantom splits it checks: once per test worker (conftest.py)
pytestmark = pytest.mark.usefixtures("memo_phantoms")

# a cell that resolves each strategy: (pretrain, tune, dataset)
CELLS = [
    ("mae3d", "seg", "brainsynth"),
    ("simclr3d", "cls", "brainsynth-grade"),
    ("models-genesis", "seg", "brainsynth"),
    ("brainmvp", "seg-tmpl", "brainsynth"),
    ("brainmvp", "cls-tmpl", "brainsynth-grade"),
]


@pytest.fixture(scope="module")
def registries():
    return get_registries()


def small(registries, pretrain, tune, dataset, **cell):
    return resolve(CellSpec(pretrain, (tune,), dataset, preset="small", **cell), registries).config


def test_every_brain_strategy_and_encoder_offers_small(registries):
    for kind in ("pretrain", "tune", "encoder"):
        for name in ENTRIES[kind]:
            assert "small" in getattr(registries, kind).get(name).presets, (kind, name)
    covered = {p for p, _, _ in CELLS} | {t for _, t, _ in CELLS}
    assert covered == set(ENTRIES["pretrain"]) | set(ENTRIES["tune"])


@pytest.mark.parametrize("pretrain,tune,dataset", CELLS)
def test_small_cells_resolve_on_uniformer3d_with_their_departures_recorded(registries, pretrain, tune, dataset):
    config = small(registries, pretrain, tune, dataset)
    model = config["model"]
    assert model["type"] == "uniformer3d" and model["roi_size"] == 32
    assert model["widths"] == [16, 32, 80, 128] and model["depths"] == [1, 1, 2, 1] and model["local_stages"] == 2
    text = "\n".join(config["deviations"])
    assert "model (uniformer3d): UniFormer-S reduced: roi_size 32 (released 96)" in text
    assert f"pretrain ({pretrain}): pre-training" in text and "budget: max_iters 150 (released 31250)" in text
    assert f"tune.0 ({tune}): fine-tuning" in text and "(released 12000)" in text
    if tune.endswith("-tmpl"):
        assert config["pretrain"]["template_canvas"] == config["tune"][0]["template_canvas"]
        assert "template canvas [48, 48, 48] (released [240, 240, 155]" in text


def test_tiny_stays_on_resunet3d_and_another_encoder_can_be_named(registries):
    tiny = resolve(CellSpec("none", ("seg",), "brainsynth"), registries).config
    assert tiny["model"]["type"] == "resunet3d" and tiny["model"]["roi_size"] == 32
    for name in ENTRIES["encoder"]:
        config = small(registries, "none", "seg", "brainsynth", encoder=name)
        assert config["model"]["type"] == name and config["model"]["roi_size"] == 32


@pytest.mark.parametrize("name", sorted(ENTRIES["encoder"]))
def test_each_small_encoder_builds_its_pyramid(registries, name):
    encoder, _ = build_test_encoder(name, "small", registries=registries)
    check_pyramid(encoder)


def test_every_brain_suite_plans_at_small_on_uniformer3d(registries):
    catalog = DataCatalog(registries)
    keys = {}
    for name in SUITES:
        suite = get_suite(registries, name)
        plan = plan_sweep(suite.cell_specs(seeds=1, preset="small"), registries, catalog, suite=name)
        planned = [c for c in plan.cells if c.run is not None]
        assert planned and len(planned) == len([c for c in plan.cells if c.status != "data unavailable"])
        assert {c.run.config["model"]["type"] for c in planned} == {"uniformer3d"}, name
        keys[name] = {(c.spec.cell_name, c.spec.dataset): [s.key for s in c.training] for c in planned}
    # suites share stages by key: brain-cls pre-trains with brain-seg's stages, 100 % labels is brain-seg's cell
    assert keys["brain-cls"][("MAE-3D", "brainsynth-grade")][0] == keys["brain-seg"][("MAE-3D", "brainsynth")][0]
    assert (
        keys["brain-label-efficiency"][("scratch labels=1.0", "brainsynth")]
        == keys["brain-seg"][("scratch", "brainsynth")]
    )
    # label efficiency: each row also classifies brainsynth-grade; at 100 % its stages are brain-cls'
    label = keys["brain-label-efficiency"]
    assert ("BrainMVP labels=0.1", "brainsynth-grade") in label
    assert label[("BrainMVP labels=1.0", "brainsynth-grade")] == keys["brain-cls"][("BrainMVP", "brainsynth-grade")]
