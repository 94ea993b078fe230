"""The mmengine model that wraps one strategy for one stage."""
from __future__ import annotations

import torch
from mmengine.model import BaseDataPreprocessor, BaseModel

from umdbench.api import TaskType
from umdbench.errors import UmdbenchError

__all__ = ["StageModel", "TaskPreprocessor"]


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

    def __init__(self, strategy: torch.nn.Module, spec: TaskType):
        super().__init__(data_preprocessor=TaskPreprocessor(spec))
        self.strategy = strategy
        self.metric_keys = tuple(spec.metric_keys)
        self.prediction_keys = tuple(spec.prediction_keys)
        self.task_name = spec.name

    def forward(self, mode: str = "tensor", **batch):
        if mode == "loss":
            return self.strategy(batch)
        if mode == "predict":
            predicted = self.strategy.predict(batch)
            if self.prediction_keys and set(predicted) != set(self.prediction_keys):
                # a metric fed other keys fails later with a KeyError far from the cause
                raise UmdbenchError(
                    f"strategy {type(self.strategy).__name__} predicted {sorted(predicted)} but task type "
                    f"{self.task_name!r} declares prediction_keys {sorted(self.prediction_keys)}; make predict() "
                    f"return exactly those (TaskType.predict does for the shared head).")
            outputs = {k: v.detach().float().cpu() for k, v in predicted.items()}
            outputs.update({k: batch[k].detach().cpu() for k in self.metric_keys if k in batch})
            return [outputs]
        raise ValueError(f"StageModel has no mode {mode!r}")

    def train_step(self, data, optim_wrapper):
        with optim_wrapper.optim_context(self):
            data = self.data_preprocessor(data, True)
            losses = self(**data, mode="loss")
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
