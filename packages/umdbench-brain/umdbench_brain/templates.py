"""BrainMVP's modality templates and the pieces its pre-training and fine-tuning share: block
masks, template crops at a crop's position, the symmetric InfoNCE (as the paper and its released code define them).

A template is one volume per modality (the encoder's ``model.modalities``) on a fixed canvas
(``template_canvas``, released 240x240x155). A study is placed centred in that canvas, so a crop
whose first voxel is ``crop_origin`` in the study's grid reads the template from
``crop_origin + (canvas - volume_shape) // 2`` (the released offset rule); voxels outside the
canvas read 0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from umdbench import draws

__all__ = ["ModalityTemplates", "canvas_start", "block_mask", "info_nce", "wide"]


def canvas_start(batch: dict, canvas) -> torch.Tensor:
    """long [B,3]: where each sample's crop starts in the template canvas."""
    canvas_t = torch.as_tensor(list(canvas), dtype=torch.long, device=batch["crop_origin"].device)
    return batch["crop_origin"].long() + torch.div(canvas_t - batch["volume_shape"].long(), 2, rounding_mode="floor")


class ModalityTemplates(nn.Module):
    """``weight`` [M, *canvas], zero-initialised (released: zero init speeds template learning).
    ``trainable``: a parameter (pre-training learns it) or a buffer (fine-tuning reads the parent's);
    either way it is stored as ``templates.weight`` in the stage artifact."""

    def __init__(self, modalities, canvas, *, trainable: bool, eps: float = 1e-9, normalise: bool = True):
        super().__init__()
        self.modalities = list(modalities)
        self.canvas = tuple(int(c) for c in canvas)
        self.eps = float(eps)
        self.normalise = normalise
        zeros = torch.zeros(len(self.modalities), *self.canvas)
        if trainable:
            self.weight = nn.Parameter(zeros)
        else:
            self.register_buffer("weight", zeros)

    def normalised(self) -> torch.Tensor:
        """Min-max over each modality's whole volume, as read by the released pre-training. At
        zero init this divides by ``eps`` (released 1e-9; see deviations)."""
        w = self.weight
        if not self.normalise:
            return w
        flat = w.flatten(1)
        lo = flat.min(1).values.view(-1, 1, 1, 1)
        hi = flat.max(1).values.view(-1, 1, 1, 1)
        return (w - lo) / (hi - lo + self.eps)

    def crop(self, start: torch.Tensor, size, flips: torch.Tensor | None = None) -> torch.Tensor:
        """[B,M,*size]: every modality's template read at each sample's canvas ``start``, zero
        outside the canvas, flipped where the image crop was (so template and image stay aligned)."""
        size = tuple(int(s) for s in size)
        tmpl = self.normalised()
        # pad by the crop size on every side so any start in (-size, canvas) is a plain slice
        pad = []
        for s in reversed(size):
            pad += [s, s]
        padded = F.pad(tmpl, pad)
        out = []
        for b in range(start.shape[0]):
            lo = [int(v) + s for v, s in zip(start[b].tolist(), size)]
            if any(v < 0 or v + s > p for v, s, p in zip(lo, size, padded.shape[1:])):
                raise ValueError(
                    f"template crop at canvas position {start[b].tolist()} of size {list(size)} lies "
                    f"outside the template canvas {list(self.canvas)} by more than a crop; the "
                    f"studies are larger than the canvas: raise template_canvas to their grid size."
                )
            piece = padded[:, lo[0] : lo[0] + size[0], lo[1] : lo[1] + size[1], lo[2] : lo[2] + size[2]]
            if flips is not None:
                axes = [1 + a for a in range(3) if int(flips[b, a])]
                if axes:
                    piece = piece.flip(axes)
            out.append(piece)
        return torch.stack(out)


def block_mask(batch: int, shape, block: int, rate: float, device, stream: str = "mask") -> torch.Tensor:
    """[B,1,*shape] float, 1 = masked: the crop split into ``block``-cubed blocks, of which
    ``n - floor((1 - rate) * n)`` are masked per sample (released: keep floor(0.2 x 1728) = 345).
    Each sample's blocks come from its own keyed ``stream`` (:mod:`umdbench.draws`), so a mask
    does not depend on how the batch is split over processes."""
    grid = [int(s) // block for s in shape]
    n = grid[0] * grid[1] * grid[2]
    keep = int((1.0 - rate) * n + 1e-9)  # floor, robust to 0.2*1728 = 345.59999...
    order = draws.rand(batch, n, stream=stream, device=device).argsort(dim=1)
    mask = torch.ones(batch, n, device=device)
    mask.scatter_(1, order[:, :keep], 0.0)
    mask = mask.view(batch, 1, *grid)
    return mask.repeat_interleave(block, 2).repeat_interleave(block, 3).repeat_interleave(block, 4)


def wide(x: torch.Tensor) -> torch.Tensor:
    """``x`` in at least float32 for a loss: AMP's half types widened, float64 kept."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """CLIP-style symmetric InfoNCE: rows of ``a`` and ``b`` are L2-normalised, the positive of
    a[i] is b[i], the other rows of the batch are negatives; mean of both directions."""
    a = F.normalize(wide(a.flatten(1)), dim=1)
    b = F.normalize(wide(b.flatten(1)), dim=1)
    logits = a @ b.t() / temperature
    target = torch.arange(a.shape[0], device=a.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))
