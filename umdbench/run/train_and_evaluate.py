"""The two stage verbs: train a stage (or reuse its cached artifact) and evaluate a tuned stage."""

from __future__ import annotations

import time

import torch

from umdbench.api import TuneStrategy
from umdbench.errors import ConfigError, PluginError, UmdbenchError
from umdbench.plan.config import ResolvedRun
from umdbench.plan.stage_plan import Stage, metric_name
from umdbench.plugin.calls import plugin_errors
from umdbench.run.build_data import build_dataset, dataloader_cfg, stage_records
from umdbench.run.build_optim import build_optim_wrapper, lr_schedule
from umdbench.run.build_runner import distributed_runner_kwargs, make_runner
from umdbench.run.build_strategy import artifact_state, build_strategy, compile_strategy, load_for_evaluation
from umdbench.run.console import echo
from umdbench.run.context import RunContext
from umdbench.run.train_settings import accumulation

__all__ = ["evaluate_stage", "train_stage", "waiting_note"]


def train_stage(stage: Stage, run: ResolvedRun, ctx: RunContext, step: str, launcher: str = "none"):
    """Train one stage unless its artifact is cached; resume it if a previous attempt was killed.

    A process holds the stage's lock while it trains, so a second process that needs the same
    stage waits and then reuses the artifact. ``launcher='pytorch'`` runs this process as one rank
    of a torchrun job (see :mod:`umdbench.run.distributed`; the process that launched torchrun holds
    the lock): the stage's batch size is split over the ranks and only rank 0 writes the artifact.
    Returns the stage folder.
    """
    ws = ctx.ws
    if ws.is_trained(stage):
        return _reuse(stage, ctx, step)
    if launcher != "none":
        return _train(stage, run, ctx, step, launcher)
    with ws.stage_lock(stage, on_wait=waiting_note(stage, step)):
        if ws.is_trained(stage):  # trained by the process we waited for
            return _reuse(stage, ctx, step)
        return _train(stage, run, ctx, step, launcher)


def waiting_note(stage: Stage, step: str):
    """What a process prints when another one holds the stage's lock."""
    return lambda path: echo(f"{step} {stage.title}: waiting for another process that is training it (lock {path})")


def _reuse(stage: Stage, ctx: RunContext, step: str):
    meta = ctx.ws.marker(stage)
    echo(
        f"{step} {stage.title}: reusing cached artifact {stage.dirname} "
        f"(trained in {meta.get('wall_time_s', 0):.1f}s; key {stage.key[:12]})"
    )
    return ctx.ws.stage_dir(stage)


def _train(stage: Stage, run: ResolvedRun, ctx: RunContext, step: str, launcher: str):
    """Train one stage on this process. Longer than 80 lines because the steps (process group, strategy, data, runner,
    hooks, training, artifact) must run in this order on every rank, and split apart their shared locals would
    travel as a dozen parameters."""
    from mmengine.model import BaseModel  # noqa: F401  (registers mmengine's default scopes)

    from umdbench.models.activation_checkpointing import apply_activation_checkpointing
    from umdbench.run.checkpoint import install_safe_loader
    from umdbench.run.evidence import EvidenceHook
    from umdbench.run.flops import FlopCountHook
    from umdbench.run.host_memory import limit_heap_retention
    from umdbench.run.stage_model import StageModel

    limit_heap_retention()
    ws = ctx.ws
    runner_kwargs = distributed_runner_kwargs(launcher)
    rank, world = 0, 1
    if launcher != "none":
        import torch.distributed as dist

        rank, world = dist.get_rank(), dist.get_world_size()
    if rank == 0:
        ws.write_stage_inputs(stage)
    train = stage.cfg["train"]
    accum = accumulation(train)
    if accum > 1 and int(train["batch_size"]) % (world * accum):  # planning checked accum alone; ranks show here
        raise ConfigError(
            f"{stage.title}: batch_size {train['batch_size']} does not split into {world} process(es) "
            f"x {accum} micro-batches; make it a multiple of {world * accum}."
        )
    # the stage's batch is global across ranks and micro-batches; one loop iteration is one micro-batch
    batch_size = max(1, int(train["batch_size"]) // (world * accum))
    train_dir = ws.train_dir(stage)
    checkpoint = ws.resume_checkpoint(stage)  # relative to this train dir, wherever the work dir now is
    resume = checkpoint is not None
    micro = f" ({accum} micro-batches of {batch_size})" if accum > 1 else ""
    echo(
        f"{step} {stage.title}: {'resuming' if resume else 'training'} {train['max_iters']} iters x batch "
        f"{train['batch_size']}{micro} on {stage.data['type']}:{stage.data['split']} (key {stage.key[:12]})"
    )
    started = time.time()
    strategy = build_strategy(stage, run, ctx)
    compile_strategy(strategy, train)
    apply_activation_checkpointing(strategy, train)
    dataset, spec = build_dataset(stage, run, ctx, stage.data["split"], training=True)
    install_safe_loader()
    interval = int(train.get("checkpoint_interval", max(1, int(train["max_iters"]) // 4))) * accum
    model = StageModel(strategy, spec, seed=run.config["seed"])
    data_parallel = {
        "world_size": world,
        "micro_batches": accum,
        "threads": torch.get_num_threads(),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
    }  # what a compute column counts
    if world > 1:
        from umdbench.run.data_parallel import convert_batch_norm, per_process_randomness

        if convert_batch_norm(model):  # batch statistics of the global batch, as one process has
            data_parallel["batch_norm"] = "statistics over the global batch (GlobalBatchNorm)"
        data_parallel["exceptions"] = per_process_randomness(model)
    runner = make_runner(
        stage,
        run,
        ctx,
        model,
        train_dir,
        train_dataloader=dataloader_cfg(
            dataset, spec, batch_size, run, train=True, global_batch=int(train["batch_size"]), micro_batches=accum
        ),
        train_cfg={"type": "IterBasedTrainLoop", "max_iters": int(train["max_iters"]) * accum, "val_interval": 10**9},
        optim_wrapper=build_optim_wrapper(strategy, train),
        param_scheduler=lr_schedule(train),
        resume=resume,
        load_from=str(checkpoint) if checkpoint is not None else None,
        **runner_kwargs,
    )
    runner.register_hook(
        {"type": "CheckpointHook", "interval": interval, "by_epoch": False, "max_keep_ckpts": 2, "save_last": True},
        priority="VERY_LOW",
    )
    # the first optimiser steps, kept in the marker for `umdbench adopt` (umdbench.run.evidence)
    evidence = EvidenceHook(lambda: artifact_state(strategy), ws.evidence_path(stage), accum, world, rank)
    runner.register_hook(evidence)
    flops = FlopCountHook(accum, world, int(train["max_iters"]))  # the compute column's estimate
    runner.register_hook(flops)
    try:
        with plugin_errors(stage_plugins(stage, run, ctx), f"training stage {stage.title}"):
            runner.train()
    finally:
        flops.close()  # a step that raised leaves the counter on otherwise
    if rank != 0:
        import torch.distributed as dist

        dist.barrier()  # rank 0 writes the artifact
        return ws.stage_dir(stage)
    wall = time.time() - started
    ws.save_stage(
        stage,
        artifact_state(strategy),
        wall_time_s=wall,
        max_iters=train["max_iters"],
        world_size=world,
        data_parallel=data_parallel,
        evidence=evidence.record(),
        train_flops=flops.total(),
    )
    ws.prune_checkpoints(stage, int(train.get("keep_checkpoints", 1)))  # after the marker: never without both
    echo(f"{step} {stage.title}: done in {wall:.1f}s -> {ws.stage_dir(stage)}")
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
    return ws.stage_dir(stage)


def stage_plugins(stage: Stage, run: ResolvedRun, ctx: RunContext, metric: str | None = None) -> list:
    """The plugins whose code a stage runs (strategy, encoder, task type, dataset; the metric when
    evaluating), for :func:`umdbench.plugin.calls.plugin_errors`."""
    reg = ctx.registries
    tuned = stage.parent if stage.kind == "eval" else stage
    dataset = ctx.catalog.get(stage.data)
    refs = [
        reg.pretrain.ref(tuned.name) if tuned.kind == "pretrain" else reg.tune.ref(tuned.name),
        reg.encoder.ref(run.config["model"]["type"]),
        reg.dataset.ref(stage.data["type"]),
        reg.task.ref(dataset.task),
    ]
    if metric:
        refs.append(reg.metric.ref(metric))
    return refs


def evaluate_stage(stage: Stage, run: ResolvedRun, ctx: RunContext, step: str) -> dict:
    """Score the cell's last tuned stage on the evaluation split with the run's ``eval.metric`` (by
    default the dataset's metric, or its task type's default). Returns ``{metric: value}``; the
    per-example predictions go to the cell's ``predictions.npz`` (store_result references them in
    the row)."""
    from mmengine.evaluator import Evaluator

    from umdbench.run.stage_model import StageModel

    tuned = stage.parent
    echo(
        f"{step} evaluate on {stage.data['type']}:{stage.data['split']}"
        + (f" with metric {stage.cfg['metric']}" if stage.cfg.get("metric") else "")
    )
    strategy = build_strategy(tuned, run, ctx, load_parent=False)
    load_for_evaluation(strategy, tuned, ctx)
    if not isinstance(strategy, TuneStrategy) or not strategy.supervised:
        raise UmdbenchError(f"the last tuning stage {tuned.name!r} is unsupervised and cannot be evaluated")
    dataset = ctx.catalog.get(stage.data)
    test_set, spec = build_dataset(stage, run, ctx, stage.data["split"], training=False)
    name = metric_name(ctx.registries, type(dataset), stage.cfg)  # stage.cfg: the run's eval section
    if not name:
        raise UmdbenchError(
            f"dataset {stage.data['type']!r} names no metric and its task type {spec.name!r} has no "
            f"default_metric; set one of them."
        )
    from umdbench.run.prediction_recorder import PredictionRecorder, with_metric_scores

    metric = ctx.registries.metric.get(name)()
    recorder = PredictionRecorder()  # per-example predictions, for the leaderboard's intervals
    # per-type or soft accuracies need the answer names and each example's record (samples carry
    # `index`, the record's position in the split)
    metric.dataset_meta = {
        "dataset": stage.data["type"],
        "split": stage.data["split"],
        "label_names": list(dataset.label_names() or []),
        "records": stage_records(stage, run, ctx, stage.data["split"]),
    }
    runner = make_runner(
        stage,
        run,
        ctx,
        StageModel(strategy, spec),
        ctx.ws.eval_dir(stage.key),
        test_dataloader=dataloader_cfg(test_set, spec, run.config["data"]["eval_batch_size"], run, train=False),
        test_cfg={"type": "TestLoop"},
        test_evaluator=Evaluator([metric, recorder]),
    )
    with plugin_errors(stage_plugins(stage, run, ctx, metric=name), f"evaluating on {stage.data['type']}"):
        metrics = runner.test()
    bad = {k: v for k, v in metrics.items() if not isinstance(v, (int, float)) or isinstance(v, bool)}
    if bad:
        ref = ctx.registries.metric.ref(name)
        raise PluginError(
            f"metric {name!r} ({ref.package if ref else 'umdbench'}) returned values that are not "
            f"numbers from compute_metrics(): {bad!r}. Return {{name: float}}; nothing was stored."
        )
    ctx.ws.write_predictions(stage.key, with_metric_scores(recorder.arrays, getattr(metric, "per_example", None)))
    return {k: float(v) for k, v in metrics.items()}
