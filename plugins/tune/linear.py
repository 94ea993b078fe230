"""``linear``: linear probing -- the task head trained on a frozen encoder (UMD paper Fig. 2b).

Every encoder parameter gets ``requires_grad=False`` and the encoder runs in eval mode under
``no_grad`` (no dropout, no activation memory); only ``head.*`` trains. The core's optimiser
builder must skip parameters that do not require grad (AdamW also skips params whose grad is None).
The head is the same as for ``direct`` (Linear -> LayerNorm -> GELU -> Linear, so strictly an MLP
probe, the paper's shared head). The paper gives no linear-probe hyper-parameters: the paper preset
reuses ``direct``'s (same head lr = 5e-6 x head multiplier, same step budgets); tiny uses lr 1e-3.
"""

from __future__ import annotations

import copy

from umdbench.kit.supervised import SupervisedTune

from .direct import DirectTune


def _linear_presets() -> dict:
    presets = copy.deepcopy(DirectTune.presets)
    for name in ("tiny", "small"):
        presets[name]["train"].update({"lr": 1e-3, "lr_mult": {"encoder": 1.0, "fusion": 1.0, "head": 1.0}})
    return presets


class LinearProbe(SupervisedTune):
    """Train only the task head; the encoder is frozen."""

    name = "linear"
    version = "1"
    freeze_encoder = True
    presets = _linear_presets()
