"""What plugin authors build on: everything a built-in strategy, task type or dataset uses.

Build a comparable tuning strategy by subclassing :class:`SupervisedTune` (the shared task head H,
its loss and predictions come from the task type); take training budgets from the recipes; reuse
the objectives, heads and data helpers instead of re-implementing them::

    from umdbench.kit import SupervisedTune, FINETUNE_TRAIN_TINY

    class BiasOnly(SupervisedTune):
        name = "bias-only"
        presets = {"tiny": {"loss": "ce", "pooling": "pooler", "train": dict(FINETUNE_TRAIN_TINY)}}
"""

from umdbench import draws
from umdbench.data.answers import normalize_answer
from umdbench.data.vqa_common import ReleaseDataset, VQADataset
from umdbench.hookspecs import hookimpl
from umdbench.kit import gradmod
from umdbench.kit.imagetext import PairGridDataset, RecordDataset, normalize_image, tokenize
from umdbench.kit.recipes import (
    FINETUNE_TRAIN_PAPER,
    FINETUNE_TRAIN_TINY,
    PRETRAIN_TRAIN_PAPER,
    PRETRAIN_TRAIN_TINY,
    TRAIN_SIZES,
    iters_for,
    m3ae_per_dataset,
)
from umdbench.kit.supervised import SupervisedTune, resolve_task_type
from umdbench.kit.tasks import (
    DEFAULT_LOSS,
    DEFAULT_POOLING,
    LOSSES,
    POOLINGS,
    TaskForward,
    build_task_head,
    encode_task,
    group_scores,
    head_logits,
    init_head_weights,
    last_linear,
    pool_features,
    task_logits,
    task_loss,
    task_predict,
)
from umdbench.kit.tasktypes import (
    IMAGE_TEXT_KEYS,
    ClassificationTask,
    ImageTextPairs,
    ImageTextTask,
    RetrievalTask,
    VQATask,
)
from umdbench.kit.testing import build_test_encoder, build_test_strategy, special_ids_of, task_info_for_test
from umdbench.models.heads import MIMDecoder, MLMHead, itm_head, projection
from umdbench.models.masking import mask_tokens
from umdbench.models.objectives import clip_loss, itm_loss, mim_loss, mlm_loss

__all__ = [
    # supervised tuning on the shared head
    "SupervisedTune",
    "resolve_task_type",
    "TaskForward",
    "build_task_head",
    "encode_task",
    "pool_features",
    "head_logits",
    "task_logits",
    "task_loss",
    "task_predict",
    "group_scores",
    "last_linear",
    "init_head_weights",
    "LOSSES",
    "POOLINGS",
    "DEFAULT_LOSS",
    "DEFAULT_POOLING",
    # task types and image + text data
    "ImageTextTask",
    "VQATask",
    "ClassificationTask",
    "RetrievalTask",
    "ImageTextPairs",
    "IMAGE_TEXT_KEYS",
    "RecordDataset",
    "PairGridDataset",
    "normalize_image",
    "tokenize",
    "ReleaseDataset",
    "VQADataset",
    "normalize_answer",
    # recipes
    "TRAIN_SIZES",
    "iters_for",
    "m3ae_per_dataset",
    "PRETRAIN_TRAIN_PAPER",
    "PRETRAIN_TRAIN_TINY",
    "FINETUNE_TRAIN_PAPER",
    "FINETUNE_TRAIN_TINY",
    # objectives, heads, gradient modulation
    "clip_loss",
    "mim_loss",
    "mlm_loss",
    "itm_loss",
    "mask_tokens",
    "MIMDecoder",
    "MLMHead",
    "itm_head",
    "projection",
    "gradmod",
    # random draws and batch-wide reductions that are the same at any world size
    "draws",
    # registering
    "hookimpl",
    # unit tests of a plugin: an encoder with its special_ids, a strategy on it, a TaskInfo
    "build_test_encoder",
    "build_test_strategy",
    "special_ids_of",
    "task_info_for_test",
]
