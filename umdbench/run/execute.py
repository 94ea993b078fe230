"""Run the stages of a plan: each training stage is an mmengine Runner in its own cached folder.

Folder layout under the work dir::

    stages/<kind>-<name>-<key>/      one per stage key (the artifact cache)
        stage.json                   resolved stage config + every input of its key
        train/                       mmengine work dir: logs, resumable checkpoints
        model.safetensors            the artifact handed downstream
        artifact.json                written last: marks the stage finished (sha256, wall time)
    runs/<cell-key>/config.json      the run's resolved config and plan
    results.sqlite                   one row per finished cell
"""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from umdbench.api import DEFAULT_METRICS, TaskInfo, TuneStrategy
from umdbench.run.checkpoint import install_safe_loader, load_artifact, save_artifact
from umdbench.plan.config import ResolvedRun, config_hash
from umdbench.errors import UmdbenchError
from umdbench.plan.stages import DataCatalog, Stage, build_plan, describe_plan
from umdbench.results.provenance import device_description, git_commit, package_versions
from umdbench.results.store import ResultsStore

TRANSIENT_PREFIXES = ("teacher.",)  # state a stage does not hand on (EMA teachers)


def echo(message: str) -> None:
    print(message, flush=True)


def atomic_write_json(path: Path, obj) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str))
    os.replace(tmp, path)


@dataclass
class Workspace:
    work_dir: Path
    registries: object
    catalog: DataCatalog = None
    _tokenizers: dict = field(default_factory=dict)

    def __post_init__(self):
        self.work_dir = Path(self.work_dir)
        self.catalog = self.catalog or DataCatalog(self.registries)

    @property
    def cache_root(self) -> Path:
        return self.work_dir / "stages"

    @property
    def store(self) -> ResultsStore:
        return ResultsStore(self.work_dir / "results.sqlite")

    def tokenizer(self, model_cfg: dict):
        from umdbench.models import build_tokenizer

        key = config_hash(model_cfg.get("text", {}))
        if key not in self._tokenizers:
            self._tokenizers[key] = build_tokenizer(model_cfg)
        return self._tokenizers[key]


# ---------------------------------------------------------------------------------------------
# building blocks
# ---------------------------------------------------------------------------------------------
def task_info(dataset) -> TaskInfo:
    names = dataset.label_names() or []
    return TaskInfo(task=dataset.task, num_classes=len(names), label_names=list(names))


def special_ids(tokenizer) -> dict:
    return {
        "mask": tokenizer.mask_token_id, "pad": tokenizer.pad_token_id, "cls": tokenizer.cls_token_id,
        "sep": tokenizer.sep_token_id, "vocab_size": len(tokenizer), "all_special": list(tokenizer.all_special_ids),
    }


def build_strategy(stage: Stage, run: ResolvedRun, ws: Workspace, load_parent: bool = True):
    from mmengine.runner import set_random_seed

    from umdbench.models import build_encoder

    set_random_seed(run.config["seed"])  # encoder and head initialisation depend on the seed only
    model_cfg = run.config["model"]
    encoder = build_encoder(model_cfg)
    if load_parent and stage.parent is not None:
        parent_dir = ws.cache_root / stage.parent.dirname
        meta = json.loads((parent_dir / "artifact.json").read_text())
        state = load_artifact(parent_dir / "model.safetensors", meta["sha256"])
        encoder_state = {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")}
        encoder.load_state_dict(encoder_state, strict=True)
    cfg = dict(stage.cfg, special_ids=special_ids(ws.tokenizer(model_cfg)))
    if stage.kind == "pretrain":
        return ws.registries.pretrain.get(stage.name)(encoder, cfg)
    dataset = ws.catalog.get(stage.data)
    strategy = ws.registries.tune.get(stage.name)(encoder, cfg, task_info(dataset))
    if load_parent and stage.parent is not None and hasattr(strategy, "head_state_prefixes"):
        carry_over_heads(strategy, state)
    return strategy


def carry_over_heads(strategy, parent_state: dict) -> list[str]:
    """Start heads a stage shares with its parent (MR-Pretrain -> TD-Calib: MIM decoder, MLM head,
    feature projections) from the parent's weights, as the released code does. Returns the keys
    loaded; heads the parent lacks, or whose shapes differ, keep their fresh initialisation."""
    own = strategy.state_dict()
    prefixes = tuple(strategy.head_state_prefixes())
    carried = {k: v for k, v in parent_state.items()
               if k.startswith(prefixes) and k in own and own[k].shape == v.shape}
    strategy.load_state_dict(carried, strict=False)
    return sorted(carried)


def build_dataset(stage: Stage, run: ResolvedRun, ws: Workspace, split: str, *, pairs: bool = False):
    from umdbench.data.images import ImageLoader
    from umdbench.run.datasets import PairGridDataset, RecordDataset

    model_cfg = run.config["model"]
    dataset = ws.catalog.get(stage.data)
    records = dataset.records(split)
    if not records:
        raise UmdbenchError(f"dataset {stage.data['type']!r} has no records in split {split!r}; "
                            f"`umdbench data check {stage.data['type']}` shows what it found.")
    cache_dir = ws.work_dir / "image_cache" if run.config["data"].get("image_cache", True) else None
    loader = ImageLoader(model_cfg["image_size"], cache_dir)
    tokenizer = ws.tokenizer(model_cfg)
    max_len = stage.cfg.get("max_text_len", model_cfg["max_text_len"])
    if pairs:
        return PairGridDataset(records, tokenizer=tokenizer, max_text_len=max_len, image_loader=loader)
    task = "pretrain" if stage.kind == "pretrain" or dataset.task == "pretrain" else dataset.task
    label_index = None
    if task == "vqa":
        label_index = {name: i for i, name in enumerate(dataset.label_names())}
    negatives = stage.cfg.get("negatives", 0) if task == "retrieval" and stage.kind == "tune" else 0
    return RecordDataset(records, task=task, tokenizer=tokenizer, max_text_len=max_len, image_loader=loader,
                         label_index=label_index, negatives=negatives, seed=run.config["seed"])


def use_amp(train: dict) -> bool:
    """bf16 autocast for the stage: on when CUDA is present and ``train.amp`` is not False
    (``"auto"``/absent/True); never on CPU, where fp32 stays the reference numerics."""
    amp = train.get("amp", "auto")
    if amp in (False, "off", "fp32", "false", "False"):
        return False
    return torch.cuda.is_available()


def build_optim_wrapper(strategy, train: dict):
    """AdamW over the strategy's parameter groups, wrapped for mmengine.

    Performance options (read with defaults, so they need not be in the preset):
    ``fused`` ("auto": the fused AdamW kernel, CUDA or CPU), ``foreach`` ("auto": multi-tensor AdamW
    when ``fused`` is False; False = the per-tensor loop) and ``amp`` ("auto": bf16 autocast through mmengine's
    ``AmpOptimWrapper`` on CUDA, off on CPU; False = fp32 everywhere).
    """
    from mmengine.optim import AmpOptimWrapper, OptimWrapper

    groups: dict[str, list] = {}
    no_decay: dict[str, list] = {}
    for name, param in strategy.named_parameters():
        if not param.requires_grad or name.startswith(TRANSIENT_PREFIXES):
            continue
        group = strategy.param_group_of(name)
        # upstream convention: no weight decay on biases and normalisation weights
        target = no_decay if (param.ndim <= 1 or name.endswith(".bias")) else groups
        target.setdefault(group, []).append(param)
    lr = float(train["lr"])
    mult = train.get("lr_mult", {})
    param_groups = []
    for store, wd in ((groups, float(train.get("weight_decay", 0.01))), (no_decay, 0.0)):
        for group, params in store.items():
            param_groups.append({"params": params, "lr": lr * float(mult.get(group, 1.0)), "weight_decay": wd})
    if not param_groups:
        raise UmdbenchError("the strategy has no trainable parameters")
    kwargs = {"betas": tuple(train.get("betas", (0.9, 0.98))), "eps": float(train.get("eps", 1e-8))}
    if train.get("fused", "auto") in ("auto", True):
        # one fused kernel per parameter on CUDA and on CPU (torch >= 2.4): on this project's
        # 2-core CPU it steps 88 M parameters 3.4x faster than the per-tensor loop and 6x faster
        # than foreach, whose CPU path is a slow per-tensor fallback (BENCHMARKS.md)
        kwargs["fused"] = True
    else:
        kwargs["foreach"] = train.get("foreach", "auto") is not False
    optimizer = torch.optim.AdamW(param_groups, **kwargs)
    clip = train.get("grad_clip")
    clip_grad = {"max_norm": float(clip)} if clip else None
    if use_amp(train):
        # bf16 has fp32's exponent range: no loss scaling needed (a static scale of 1 is a no-op)
        return AmpOptimWrapper(optimizer=optimizer, clip_grad=clip_grad, dtype="bfloat16", loss_scale=1.0)
    return OptimWrapper(optimizer, clip_grad=clip_grad)


def compile_strategy(strategy, train: dict) -> bool:
    """``train.compile`` (default False): ``torch.compile`` the encoder's hot blocks in place
    (ViT blocks, text tower, fusion layers, decoder blocks). Parameter names, state dicts and
    checkpoints are unchanged (``nn.Module.compile``). Returns whether anything was compiled."""
    if not train.get("compile", False):
        return False
    mode = train.get("compile_mode") or None
    targets = []
    encoder = getattr(strategy, "encoder", None)
    if encoder is not None:
        targets += list(encoder.vision.blocks) + [encoder.text]
        targets += list(encoder.fusion.text_layers) + list(encoder.fusion.image_layers)
    decoder = getattr(strategy, "mim_decoder", None)
    if decoder is not None:
        targets += list(decoder.blocks)
    for module in targets:
        module.compile(mode=mode, dynamic=None)
    return bool(targets)


def lr_schedule(train: dict) -> list[dict]:
    total = int(train["max_iters"])
    warm = int(round(float(train.get("warmup_ratio", 0.1)) * total))
    schedule = []
    if warm > 0:
        schedule.append({"type": "LinearLR", "start_factor": 1e-3, "end_factor": 1.0, "by_epoch": False, "begin": 0, "end": warm})
    if train.get("schedule", "linear") == "cosine":
        schedule.append({"type": "CosineAnnealingLR", "T_max": total - warm, "eta_min": 0.0, "by_epoch": False, "begin": warm, "end": total})
    else:
        schedule.append({"type": "LinearLR", "start_factor": 1.0, "end_factor": 0.0, "by_epoch": False, "begin": warm, "end": total})
    return schedule


# mmengine notices about its own deprecations, irrelevant to a umdbench user (kept in the file log)
_MMENGINE_NOTICES = ("will be deprecated", "is the alias of", "has no metainfo", "prefix is not set")


def _drop_mmengine_notices(record: logging.LogRecord) -> bool:
    message = record.getMessage()
    return not any(notice in message for notice in _MMENGINE_NOTICES)


def make_runner(stage: Stage, run: ResolvedRun, ws: Workspace, model, work_dir: Path, **kwargs):
    from mmengine.runner import Runner

    from umdbench.run.hooks import ProgressHook

    class StageRunner(Runner):
        """A Runner whose console stays quiet (the full log still goes to the work dir)."""

        def build_logger(self, log_level="INFO", log_file=None, **kw):
            logger = super().build_logger(log_level=log_level, log_file=log_file, **kw)
            for handler in logger.handlers:
                if type(handler) is logging.StreamHandler:
                    handler.setLevel(logging.WARNING)
                    handler.addFilter(_drop_mmengine_notices)
            return logger

        def _log_env(self, env_cfg):  # mmengine's collects compiler/CUDA details: slow and noisy
            self.logger.info(f"umdbench stage {stage.dirname}; device {device_description()}; seed {self._seed}")

    return StageRunner(
        model=model,
        work_dir=str(work_dir),
        experiment_name=f"{stage.dirname}",
        randomness={"seed": run.config["seed"]},
        default_hooks={"logger": {"type": "LoggerHook", "interval": 10, "log_metric_by_epoch": False},
                       "checkpoint": None, "timer": {"type": "IterTimerHook"}},
        custom_hooks=[ProgressHook(stage.title)],
        log_processor={"by_epoch": False},
        env_cfg={"cudnn_benchmark": False},
        visualizer={"type": "Visualizer", "vis_backends": [{"type": "LocalVisBackend"}], "name": f"vis-{stage.dirname}-{time.time_ns()}"},
        **kwargs,
    )


def dataloader_cfg(dataset, batch_size: int, run: ResolvedRun, *, train: bool):
    from umdbench.run.datasets import auto_num_workers

    workers = auto_num_workers(run.config["data"].get("num_workers", "auto"))
    sampler = {"type": "InfiniteSampler", "shuffle": True, "seed": run.config["seed"]} if train else {"type": "DefaultSampler", "shuffle": False}
    return {
        "dataset": dataset, "sampler": sampler, "batch_size": int(batch_size), "num_workers": workers,
        "persistent_workers": workers > 0, "pin_memory": torch.cuda.is_available(),
        "collate_fn": {"type": "default_collate"},
    }


# ---------------------------------------------------------------------------------------------
# stages
# ---------------------------------------------------------------------------------------------
def distributed_runner_kwargs(launcher: str) -> dict:
    """Runner arguments for a multi-process stage (``launcher='pytorch'``, started by torchrun).

    mmengine's own process-group set-up calls ``torch.cuda.set_device`` unconditionally, so on a
    machine without CUDA the gloo group is created here first (the Runner then skips its own) and
    the model wrapper is told not to pin a device.
    """
    if launcher == "none":
        return {}
    import torch.distributed as dist

    kwargs: dict = {"launcher": launcher}
    if not torch.cuda.is_available():
        if not dist.is_initialized():
            dist.init_process_group("gloo")
        kwargs["cfg"] = {"model_wrapper_cfg": {"type": "MMDistributedDataParallel", "device_ids": None,
                                               "find_unused_parameters": True}}
    return kwargs


def train_stage(stage: Stage, run: ResolvedRun, ws: Workspace, step: str, launcher: str = "none") -> Path:
    """Train one stage unless its artifact is cached; resume it if a previous attempt was killed.

    ``launcher='pytorch'`` runs this process as one rank of a torchrun job (see
    :mod:`umdbench.run.distributed`): the stage's batch size is split over the ranks and only rank 0
    writes the artifact.
    """
    from mmengine.model import BaseModel  # noqa: F401  (registers mmengine's default scopes)

    from umdbench.run.stage_model import StageModel

    stage_dir = ws.cache_root / stage.dirname
    marker = stage_dir / "artifact.json"
    if marker.is_file():
        meta = json.loads(marker.read_text())
        echo(f"{step} {stage.title}: reusing cached artifact {stage.dirname} "
             f"(trained in {meta.get('wall_time_s', 0):.1f}s; key {stage.key[:12]})")
        return stage_dir
    runner_kwargs = distributed_runner_kwargs(launcher)
    rank, world = 0, 1
    if launcher != "none":
        import torch.distributed as dist

        rank, world = dist.get_rank(), dist.get_world_size()
    stage_dir.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        atomic_write_json(stage_dir / "stage.json", {"key": stage.key, "key_inputs": stage.key_inputs, "data": stage.data})
    train = stage.cfg["train"]
    batch_size = max(1, int(train["batch_size"]) // world)  # the stage's batch is global across ranks
    train_dir = stage_dir / "train"
    resume = (train_dir / "last_checkpoint").is_file()
    echo(f"{step} {stage.title}: {'resuming' if resume else 'training'} {train['max_iters']} iters x batch "
         f"{train['batch_size']} on {stage.data['type']}:{stage.data['split']} (key {stage.key[:12]})")
    started = time.time()
    strategy = build_strategy(stage, run, ws)
    compile_strategy(strategy, train)
    dataset = build_dataset(stage, run, ws, stage.data["split"])
    install_safe_loader()
    interval = int(train.get("checkpoint_interval", max(1, int(train["max_iters"]) // 4)))
    runner = make_runner(
        stage, run, ws, StageModel(strategy), train_dir,
        train_dataloader=dataloader_cfg(dataset, batch_size, run, train=True),
        train_cfg={"type": "IterBasedTrainLoop", "max_iters": int(train["max_iters"]), "val_interval": 10**9},
        optim_wrapper=build_optim_wrapper(strategy, train),
        param_scheduler=lr_schedule(train),
        resume=resume,
        **runner_kwargs,
    )
    runner.register_hook({"type": "CheckpointHook", "interval": interval, "by_epoch": False, "max_keep_ckpts": 2,
                          "save_last": True}, priority="VERY_LOW")
    runner.train()
    if rank != 0:
        import torch.distributed as dist

        dist.barrier()  # rank 0 writes the artifact
        return stage_dir
    state = {k: v for k, v in strategy.state_dict().items() if not k.startswith(TRANSIENT_PREFIXES)}
    sha = save_artifact(state, stage_dir / "model.safetensors")
    wall = time.time() - started
    atomic_write_json(marker, {"key": stage.key, "sha256": sha, "wall_time_s": wall, "max_iters": train["max_iters"],
                               "world_size": world, "created_at": time.strftime("%Y-%m-%dT%H:%M:%S")})
    echo(f"{step} {stage.title}: done in {wall:.1f}s -> {stage_dir}")
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
    return stage_dir


def evaluate(stage: Stage, run: ResolvedRun, ws: Workspace, step: str) -> dict:
    from mmengine.evaluator import Evaluator

    from umdbench.run.stage_model import StageModel

    tuned = stage.parent
    echo(f"{step} evaluate on {stage.data['type']}:{stage.data['split']}")
    strategy = build_strategy(tuned, run, ws, load_parent=False)
    parent_dir = ws.cache_root / tuned.dirname
    meta = json.loads((parent_dir / "artifact.json").read_text())
    state = load_artifact(parent_dir / "model.safetensors", meta["sha256"])
    missing, unexpected = strategy.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith(TRANSIENT_PREFIXES)]
    if missing or unexpected:
        raise UmdbenchError(f"artifact {parent_dir} does not fit strategy {tuned.name!r}: missing {missing[:5]}, "
                            f"unexpected {unexpected[:5]}. Delete the folder to retrain it.")
    if not isinstance(strategy, TuneStrategy) or not strategy.supervised:
        raise UmdbenchError(f"the last tuning stage {tuned.name!r} is unsupervised and cannot be evaluated")
    dataset = ws.catalog.get(stage.data)
    metric_name = dataset.metric or DEFAULT_METRICS[dataset.task]
    metric = ws.registries.metric.get(metric_name)()
    test_set = build_dataset(stage, run, ws, stage.data["split"], pairs=dataset.task == "retrieval")
    eval_dir = ws.work_dir / "runs" / stage.key[:16] / "eval"
    runner = make_runner(
        stage, run, ws, StageModel(strategy), eval_dir,
        test_dataloader=dataloader_cfg(test_set, run.config["data"]["eval_batch_size"], run, train=False),
        test_cfg={"type": "TestLoop"}, test_evaluator=Evaluator([metric]),
    )
    metrics = runner.test()
    return {k: float(v) for k, v in metrics.items()}


def run_cell(run: ResolvedRun, ws: Workspace) -> dict:
    """Run (or reuse) every stage of a cell and store its results row. Returns the row."""
    started = time.time()
    stages = build_plan(run, ws.registries, ws.catalog)
    cell = stages[-1]
    store = ws.store
    existing = store.get(cell.key)
    if existing is not None:
        for n, stage in enumerate(stages[:-1], 1):
            cached = (ws.cache_root / stage.dirname / "artifact.json").is_file()
            echo(f"[{n}/{len(stages)}] {stage.title}: " + (f"reusing cached artifact {stage.dirname}" if cached else
                 "not in the cache (not needed: the result is stored)"))
        echo(f"[{len(stages)}/{len(stages)}] evaluate: result already in the store (cell {cell.key[:12]}); not re-running.")
        return existing
    run_dir = write_run_config(run, stages, ws)
    echo(f"umdbench run: {run.cell.label}, preset {run.cell.preset}, seed {run.cell.seed}\n{describe_plan(stages, ws.cache_root)}")
    for n, stage in enumerate(stages[:-1], 1):
        train_stage(stage, run, ws, f"[{n}/{len(stages)}]")
    metrics = evaluate(cell, run, ws, f"[{len(stages)}/{len(stages)}]")
    row = result_row(run, stages, metrics, time.time() - started)
    store.add(row)
    atomic_write_json(run_dir / "result.json", {k: v for k, v in row.items() if k != "config"})
    return row


def write_run_config(run: ResolvedRun, stages: list[Stage], ws: Workspace) -> Path:
    """``runs/<cell key>/config.json``: the cell's resolved config and stage plan. Returns the folder."""
    run_dir = ws.work_dir / "runs" / stages[-1].key[:16]
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run_dir / "config.json", {"config": run.config, "config_hash": run.hash,
                                                "plan": [{"title": s.title, "key": s.key, "dir": s.dirname} for s in stages]})
    return run_dir


def stage_wall_time(stage: Stage, ws: Workspace) -> float:
    """Training seconds recorded in a cached stage's ``artifact.json`` (0 if absent)."""
    try:
        return float(json.loads((ws.cache_root / stage.dirname / "artifact.json").read_text()).get("wall_time_s", 0.0))
    except (OSError, ValueError):
        return 0.0


def result_row(run: ResolvedRun, stages: list[Stage], metrics: dict, wall_time_s: float, device: str | None = None) -> dict:
    """The results-store row of a finished cell (``stages``: its plan, evaluation last)."""
    cell = stages[-1]
    return {
        "cell_key": cell.key, "suite": run.cell.suite, "cell_name": run.cell.cell_name,
        "pretrain": run.cell.pretrain, "tune": "+".join(run.cell.tune), "dataset": run.cell.dataset,
        "preset": run.cell.preset, "seed": run.cell.seed, "metrics": metrics, "config": run.config,
        "config_hash": run.hash, "stage_keys": [s.key for s in stages[:-1]], "git_commit": git_commit(),
        "packages": package_versions(), "data_fingerprint": cell.data["fingerprint"],
        "wall_time_s": wall_time_s, "device": device or device_description(),
    }
