"""The mmengine model that wraps one strategy for one stage."""

from __future__ import annotations

import contextlib

import torch
from mmengine.model import BaseDataPreprocessor, BaseModel

from umdbench import draws
from umdbench.api import TaskType
from umdbench.errors import UmdbenchError

__all__ = ["StageModel", "TaskPreprocessor"]

#: batch keys the keyed training loader adds (umdbench.run.data_parallel); never handed to a strategy
STEP_KEY, POSITION_KEY = "sample_step", "sample_position"


class TaskPreprocessor(BaseDataPreprocessor):
    """mmengine's device move, then the task type's ``preprocess`` (e.g. CLIP normalisation of
    uint8 images: done after the move, it keeps worker-to-main and host-to-device copies small and
    puts the arithmetic on the accelerator when there is one)."""

    def __init__(self, spec: TaskType):
        super().__init__()
        self.spec = spec

    def forward(self, data, training: bool = False):
        data = super().forward(data, training)
        return self.spec.preprocess(data) if isinstance(data, dict) else data


class StageModel(BaseModel):
    """Runs ``strategy(batch)`` for losses and ``strategy.predict(batch)`` for evaluation.

    The training step is mmengine's, with one addition: between backward and the optimiser step
    the strategy may modulate gradients (GM-Coord), and after the step it may update state that
    is not trained by the optimiser (an EMA teacher). Evaluation hands the metric the predict
    outputs plus the task type's ``metric_keys`` of the batch.
    """

    def __init__(self, strategy: torch.nn.Module, spec: TaskType, seed: int = 0):
        super().__init__(data_preprocessor=TaskPreprocessor(spec))
        self.strategy = strategy
        self.seed = int(seed)  # keys the strategy's random draws with each sample's step and position
        self.metric_keys = tuple(spec.metric_keys)
        self.prediction_keys = tuple(spec.prediction_keys)
        self.task_name = spec.name

    def forward(self, mode: str = "tensor", **batch):
        step, positions = batch.pop(STEP_KEY, None), batch.pop(POSITION_KEY, None)
        if mode == "loss":
            if step is None or draws.current() is not None:
                return self.checked_losses(self.strategy(batch))
            with self.step_draws(step, positions):
                return self.checked_losses(self.strategy(batch))
        if mode == "predict":
            predicted = self.strategy.predict(batch)
            if self.prediction_keys and set(predicted) != set(self.prediction_keys):
                # a metric fed other keys fails later with a KeyError far from the cause
                raise UmdbenchError(
                    f"strategy {type(self.strategy).__name__} predicted {sorted(predicted)} but task type "
                    f"{self.task_name!r} declares prediction_keys {sorted(self.prediction_keys)}; make predict() "
                    f"return exactly those (TaskType.predict does for the shared head)."
                )
            outputs = {k: v.detach().float().cpu() for k, v in predicted.items()}
            outputs.update({k: batch[k].detach().cpu() for k in self.metric_keys if k in batch})
            return [outputs]
        raise ValueError(f"StageModel has no mode {mode!r}")

    def checked_losses(self, out):
        """A strategy's forward must return a dict with at least one ``loss*`` tensor (mmengine
        would otherwise fail far from the cause, or train nothing)."""
        losses = (
            [k for k, v in out.items() if k.startswith("loss") and torch.is_tensor(v)] if isinstance(out, dict) else []
        )
        if not losses:
            got = sorted(out) if isinstance(out, dict) else type(out).__name__
            raise UmdbenchError(
                f"strategy {type(self.strategy).__name__} ({type(self.strategy).__module__}) returned {got} from "
                f"forward(); it must return a dict with at least one 'loss*' tensor (summed into the training loss) "
                f"and any other values to log. Nothing was stored."
            )
        return out

    def step_draws(self, step, positions):
        """The draw context of one (micro-)batch: its optimiser step and its samples' positions in
        the step's global batch (:mod:`umdbench.draws`)."""
        return draws.step_context(self.seed, int(step[0]), [int(p) for p in positions.tolist()])

    def train_step(self, data, optim_wrapper, forward=None):
        """mmengine's step with the strategy's hooks. ``forward`` is the module whose call runs the
        losses: this model in one process, its DDP wrapper under torchrun
        (:class:`~umdbench.run.data_parallel.StageDistributedDataParallel`), so the gradients are
        all-reduced by the time the hooks read them. The whole step, hooks included, runs in the
        batch's draw context (GM-Coord's gradient noise is a per-step draw)."""
        forward = self if forward is None else forward
        keyed = isinstance(data, dict) and STEP_KEY in data
        context = self.step_draws(data[STEP_KEY], data[POSITION_KEY]) if keyed else contextlib.nullcontext()
        with context:
            with optim_wrapper.optim_context(forward):
                data = self.data_preprocessor(data, True)
                losses = forward(**data, mode="loss")
            parsed, log_vars = self.parse_losses(losses)
            # 1 / micro-batches per step (1 without gradient accumulation), as OptimWrapper.update_params
            optim_wrapper.backward(optim_wrapper.scale_loss(parsed))
            if optim_wrapper.should_update():
                for key, value in self.strategy.modulate_gradients().items():
                    log_vars[key] = torch.as_tensor(float(value))
                optim_wrapper.step()
                optim_wrapper.zero_grad()
                self.strategy.after_optimizer_step()
        return log_vars
