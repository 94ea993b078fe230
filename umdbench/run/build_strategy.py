"""The strategy a stage trains or evaluates: built on a fresh encoder, started from the parent
stage's artifact, optionally compiled; and the state a finished stage stores and loads back."""

from __future__ import annotations

from umdbench.api import Strategy, TaskInfo, TaskType
from umdbench.errors import UmdbenchError
from umdbench.plan.config import ResolvedRun
from umdbench.plan.stage_plan import Stage
from umdbench.run.build_data import stage_task_type
from umdbench.run.context import RunContext
from umdbench.run.train_settings import train_setting

__all__ = [
    "artifact_state",
    "build_strategy",
    "carry_over_heads",
    "compile_strategy",
    "load_for_evaluation",
    "special_ids",
    "task_info",
]


def task_info(dataset, spec: TaskType) -> TaskInfo:
    """What a tuning strategy is told about its dataset's task: labels and the task type."""
    names = dataset.label_names() or []
    return TaskInfo(task=dataset.task, num_classes=len(names), label_names=list(names), spec=spec)


def special_ids(tokenizer) -> dict | None:
    """The tokenizer's special-token ids a strategy masks and pads with (None without a tokenizer)."""
    if tokenizer is None:
        return None
    from umdbench.models.text import special_ids_from_tokenizer

    return special_ids_from_tokenizer(tokenizer)


def build_strategy(stage: Stage, run: ResolvedRun, ctx: RunContext, load_parent: bool = True) -> Strategy:
    """The stage's strategy on a fresh encoder, started from the parent stage's artifact: the
    encoder strictly, the heads the strategy declares (:meth:`Strategy.head_state_prefixes`)
    where names and shapes match."""
    from mmengine.runner import set_random_seed

    set_random_seed(run.config["seed"])  # encoder and head initialisation depend on the seed only
    model_cfg = run.config["model"]
    with ctx.registries.encoder.guard(model_cfg["type"], "building the encoder"):
        encoder = ctx.encoder_class(model_cfg).from_config(model_cfg)
    parent_state = None
    if load_parent and stage.parent is not None:
        parent_state = ctx.ws.load_stage(stage.parent)
        encoder_state = {k[len("encoder.") :]: v for k, v in parent_state.items() if k.startswith("encoder.")}
        encoder.load_state_dict(encoder_state, strict=True)
    cfg = dict(stage.cfg)
    ids = special_ids(ctx.tokenizer(model_cfg))
    if ids is not None:
        cfg["special_ids"] = ids
    if stage.kind == "pretrain":
        with ctx.registries.pretrain.guard(stage.name, "building the strategy"):
            return ctx.registries.pretrain.get(stage.name)(encoder, cfg)
    dataset = ctx.catalog.get(stage.data)
    info = task_info(dataset, stage_task_type(ctx, dataset, "tune"))
    with ctx.registries.tune.guard(stage.name, "building the strategy"):
        strategy = ctx.registries.tune.get(stage.name)(encoder, cfg, info)
    if parent_state is not None:
        carry_over_heads(strategy, parent_state)
    return strategy


def carry_over_heads(strategy: Strategy, parent_state: dict) -> list[str]:
    """Start the heads a strategy shares with its parent from the parent's weights, as the released
    code does (MR-Pretrain -> TD-Calib). Returns the keys loaded; heads the parent lacks, or whose
    shapes differ, keep their fresh initialisation."""
    prefixes = tuple(strategy.head_state_prefixes())
    if not prefixes:
        return []
    own = strategy.state_dict()
    carried = {k: v for k, v in parent_state.items() if k.startswith(prefixes) and k in own and own[k].shape == v.shape}
    strategy.load_state_dict(carried, strict=False)
    return sorted(carried)


def compile_strategy(strategy: Strategy, train: dict) -> bool:
    """``train.compile`` (default False): ``torch.compile`` the strategy's
    :meth:`~umdbench.api.Strategy.compile_targets` in place. Parameter names, state dicts and
    checkpoints are unchanged (``nn.Module.compile``). Returns whether anything was compiled."""
    if not train_setting(train, "compile"):
        return False
    mode = train.get("compile_mode") or None
    targets = strategy.compile_targets()
    for module in targets:
        module.compile(mode=mode, dynamic=None)
    return bool(targets)


def artifact_state(strategy: Strategy) -> dict:
    """What a finished stage stores: the strategy's state minus its declared transient state."""
    transient = tuple(strategy.transient_state_prefixes())
    return {k: v for k, v in strategy.state_dict().items() if not (transient and k.startswith(transient))}


def load_for_evaluation(strategy: Strategy, stage: Stage, ctx: RunContext) -> None:
    """Load a tuned stage's artifact into a fresh copy of its strategy; every non-transient key
    must fit, so an artifact from another strategy or geometry is refused."""
    state = ctx.ws.load_stage(stage)
    missing, unexpected = strategy.load_state_dict(state, strict=False)
    transient = tuple(strategy.transient_state_prefixes())
    missing = [k for k in missing if not (transient and k.startswith(transient))]
    if missing or unexpected:
        raise UmdbenchError(
            f"artifact {ctx.ws.weights_path(stage)} does not fit strategy {stage.name!r}: missing "
            f"{missing[:5]}, unexpected {unexpected[:5]}. Delete the folder "
            f"{ctx.ws.stage_dir(stage)} to retrain it."
        )
