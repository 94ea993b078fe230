"""The mmengine model that wraps one strategy for one stage."""
from __future__ import annotations

import torch
from mmengine.model import BaseDataPreprocessor, BaseModel

PASS_THROUGH = ("label", "answer_type", "image_index", "text_index", "index")


class ImageNormalizer(BaseDataPreprocessor):
    """mmengine's device move, then CLIP normalisation of uint8 ``image`` batches.

    The datasets yield uint8 pixels (:mod:`umdbench.run.datasets`); normalising after the move keeps
    worker-to-main transfers and host-to-device copies 4x smaller and puts the arithmetic on the
    accelerator when there is one. Float images (synthetic batches, tests) pass unchanged.
    """

    def forward(self, data, training: bool = False):
        from umdbench.run.datasets import normalize_image

        data = super().forward(data, training)
        image = data.get("image") if isinstance(data, dict) else None
        if isinstance(image, torch.Tensor) and image.dtype == torch.uint8:
            data["image"] = normalize_image(image)
        return data


class StageModel(BaseModel):
    """Runs ``strategy(batch)`` for losses and ``strategy.predict(batch)`` for evaluation.

    The training step is mmengine's, with one addition: between backward and the optimiser step
    the strategy may modulate gradients (GM-Coord), and after the step it may update state that
    is not trained by the optimiser (an EMA teacher).
    """

    def __init__(self, strategy: torch.nn.Module):
        super().__init__(data_preprocessor=ImageNormalizer())
        self.strategy = strategy

    def forward(self, mode: str = "tensor", **batch):
        if mode == "loss":
            return self.strategy(batch)
        if mode == "predict":
            outputs = {k: v.detach().float().cpu() for k, v in self.strategy.predict(batch).items()}
            outputs.update({k: batch[k].detach().cpu() for k in PASS_THROUGH if k in batch})
            return [outputs]
        raise ValueError(f"StageModel has no mode {mode!r}")

    def train_step(self, data, optim_wrapper):
        with optim_wrapper.optim_context(self):
            data = self.data_preprocessor(data, True)
            losses = self(**data, mode="loss")
        parsed, log_vars = self.parse_losses(losses)
        optim_wrapper.backward(parsed)
        if optim_wrapper.should_update():
            for key, value in self.strategy.modulate_gradients().items():
                log_vars[key] = torch.as_tensor(float(value))
            optim_wrapper.step()
            optim_wrapper.zero_grad()
            self.strategy.after_optimizer_step()
        return log_vars
