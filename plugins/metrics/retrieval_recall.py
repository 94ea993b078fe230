"""Image-text retrieval recall R@1/5/10 in both directions, in percent.

Inputs per batch (CONTRACT.md): ``score`` [B], ``image_index`` [B], ``text_index`` [B], covering
every (image, text) pair of the evaluation set; image i matches text i. The scores form an
``n_images x n_texts`` matrix (upstream: a full cross-encoder scan of the 2,000-pair set).

* ``i2t_rK`` (upstream TR@K): per image, is its text among the K best-scored texts?
* ``t2i_rK`` (upstream IR@K): per text, is its image among the K best-scored images?

Ties count against the model: the rank of the match is the number of *other* candidates scoring
greater than or equal to it, so a constant scorer gets chance-level recall, not 100%.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from mmengine.evaluator import BaseMetric

KS = (1, 5, 10)


def _as_tensor(x: Any) -> torch.Tensor:
    return x.detach().cpu() if isinstance(x, torch.Tensor) else torch.as_tensor(x)


def score_matrix(score: torch.Tensor, image_index: torch.Tensor, text_index: torch.Tensor) -> torch.Tensor:
    n_img = int(image_index.max()) + 1
    n_txt = int(text_index.max()) + 1
    if n_img != n_txt:
        raise ValueError(f"retrieval-recall: {n_img} images but {n_txt} texts; image i must match text i")
    mat = torch.full((n_img, n_txt), float("nan"), dtype=torch.float64)
    mat[image_index, text_index] = score.double()
    if torch.isnan(mat).any():
        missing = int(torch.isnan(mat).sum())
        raise ValueError(
            f"retrieval-recall: {missing} of {n_img * n_txt} (image, text) pairs have no score; "
            f"the evaluation must score every pair"
        )
    return mat


def recall_at_k(mat: torch.Tensor, ks: Sequence[int] = KS) -> dict[int, float]:
    """Row-wise recall: row i's match is column i. Pessimistic ties (see module doc)."""
    pos = mat.diagonal().unsqueeze(1)
    rank = (mat >= pos).sum(dim=1) - 1  # other candidates scoring >= the match
    return {k: float((rank < k).double().mean()) * 100.0 for k in ks}


class RetrievalRecall(BaseMetric):
    default_prefix = None

    def process(self, data_batch: Any, data_samples: Sequence[dict]) -> None:
        for sample in data_samples:
            self.results.append(
                {
                    "score": _as_tensor(sample["score"]).double().view(-1),
                    "image_index": _as_tensor(sample["image_index"]).long().view(-1),
                    "text_index": _as_tensor(sample["text_index"]).long().view(-1),
                }
            )

    def compute_metrics(self, results: list) -> dict[str, float]:
        score = torch.cat([r["score"] for r in results])
        mat = score_matrix(
            score, torch.cat([r["image_index"] for r in results]), torch.cat([r["text_index"] for r in results])
        )
        i2t = recall_at_k(mat)
        t2i = recall_at_k(mat.t())
        out = {f"t2i_r{k}": t2i[k] for k in KS}
        out.update({f"i2t_r{k}": i2t[k] for k in KS})
        return out
