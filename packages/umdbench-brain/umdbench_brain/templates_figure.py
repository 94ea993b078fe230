"""Pictures of BrainMVP's learnt modality templates, as the paper's Fig. 4 shows them: each
modality's template, min-max normalised as pre-training reads it, in its three central slices
(axial, coronal, sagittal), at the pre-training checkpoints a stage kept and in its final artifact.

    python -m umdbench_brain.templates_figure WORK_DIR_OR_STAGE_DIR OUT.png [--checkpoints all|none|2,4]
                                              [--no-final]

``WORK_DIR_OR_STAGE_DIR``: a ``brainmvp`` pre-training stage folder (``stages/pretrain-brainmvp-<key>``)
or a work dir, whose newest finished ``brainmvp`` stage is drawn. Checkpoints are the mmengine
files in the stage's ``train/`` folder (``iter_<n>.pth``, read with
:func:`umdbench.run.checkpoint.safe_torch_load`: tensors only); a finished stage keeps the newest
``pretrain.train.keep_checkpoints`` of them (default 1; mmengine keeps at most 2 while training).
The final artifact (``model.safetensors``) is read only after its sha256 matches its marker.
Axes: the canvas is in the studies' RAS voxel order (``[x, y, z]``: BraTS' 240 x 240 x 155), so
axial = the central ``z`` slice, coronal = central ``y``, sagittal = central ``x``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

__all__ = ["render", "find_stage", "template_snapshots", "central_slices"]

TEMPLATE_KEY = "templates.weight"
VIEWS = ("axial", "coronal", "sagittal")


def find_stage(path: str | Path) -> Path:
    """The ``brainmvp`` pre-training stage folder ``path`` names: the folder itself, or a work dir's
    newest finished one. Raises ``FileNotFoundError`` saying what was looked for."""
    from umdbench.run.workspace import Workspace

    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path} is not a folder; pass a work dir or a stages/pretrain-brainmvp-<key> folder.")
    if (path / "stage.json").is_file() or (path / "train").is_dir():
        return path
    stages = Workspace(path).finished_stages("pretrain", "brainmvp")
    if not stages:
        raise FileNotFoundError(
            f"{path} holds no finished brainmvp pre-training stage (stages/pretrain-brainmvp-<key> "
            f"with its marker); run `umdbench run --pretrain brainmvp ...` there first, or pass "
            f"a stage folder."
        )
    return stages[0]


def _iteration(p: Path) -> int:
    digits = p.stem.rpartition("_")[2]
    return int(digits) if digits.isdigit() else -1


def _stage_info(stage: Path) -> tuple[list[str], float]:
    """``(modalities, template_eps)`` from the stage's ``stage.json`` (defaults when absent)."""
    try:
        inputs = json.loads((stage / "stage.json").read_text()).get("key_inputs", {})
    except (OSError, ValueError):
        inputs = {}
    mods = list((inputs.get("model") or {}).get("modalities") or [])
    eps = float((inputs.get("cfg") or {}).get("template_eps", 1e-9))
    return mods, eps


def template_snapshots(stage: str | Path, checkpoints="all", final: bool = True) -> list[tuple[str, np.ndarray]]:
    """``[(label, templates float32 [M, X, Y, Z])]``, oldest first: the chosen checkpoints
    (``"all"``, ``"none"`` or iterations) then the final artifact."""
    from umdbench.run.checkpoint import load_artifact, safe_torch_load

    stage = Path(stage)
    out = []
    if checkpoints != "none":
        files = sorted((stage / "train").glob("iter_*.pth"), key=_iteration)
        if checkpoints != "all":
            wanted = {int(i) for i in checkpoints}
            missing = sorted(wanted - {_iteration(p) for p in files})
            if missing:
                have = ", ".join(str(_iteration(p)) for p in files) or "none"
                raise FileNotFoundError(
                    f"{stage / 'train'} has no checkpoint of iteration(s) {missing} (it keeps: "
                    f"{have}); train with pretrain.train.keep_checkpoints=N to keep more."
                )
            files = [p for p in files if _iteration(p) in wanted]
        for p in files:
            state = safe_torch_load(p).get("state_dict", {})
            key = next((k for k in state if k == TEMPLATE_KEY or k.endswith("." + TEMPLATE_KEY)), None)
            if key is None:
                raise KeyError(f"checkpoint {p} holds no {TEMPLATE_KEY}: it is not a brainmvp pre-training checkpoint.")
            out.append((f"iter {_iteration(p)}", state[key].float().numpy()))
    if final:
        weights = stage / "model.safetensors"
        marker = stage / "artifact.json"
        if weights.is_file():
            sha = json.loads(marker.read_text()).get("sha256") if marker.is_file() else None
            state = load_artifact(weights, sha)
            if TEMPLATE_KEY not in state:
                raise KeyError(f"artifact {weights} holds no {TEMPLATE_KEY}: it is not a brainmvp pre-training stage.")
            out.append(("final", state[TEMPLATE_KEY].float().numpy()))
    if not out:
        raise FileNotFoundError(f"{stage} has neither checkpoints (train/iter_*.pth) nor a final artifact to draw.")
    return out


def central_slices(volume: np.ndarray) -> dict[str, np.ndarray]:
    """The three central slices of a ``[X, Y, Z]`` RAS volume, rotated for display (anterior /
    superior up)."""
    x, y, z = (s // 2 for s in volume.shape)
    return {
        "axial": np.rot90(volume[:, :, z]),
        "coronal": np.rot90(volume[:, y, :]),
        "sagittal": np.rot90(volume[x, :, :]),
    }


def _normalised(w: np.ndarray, eps: float) -> np.ndarray:
    lo, hi = float(w.min()), float(w.max())
    return (w - lo) / (hi - lo + eps)


def render(stage_dir_or_work_dir: str | Path, out_png: str | Path, checkpoints="all", final: bool = True) -> Path:
    """One PNG: a row per modality, per snapshot (checkpoint or final) the template's axial, coronal
    and sagittal central slices, each min-max normalised as pre-training reads it. Returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stage = find_stage(stage_dir_or_work_dir)
    snaps = template_snapshots(stage, checkpoints, final)
    mods, eps = _stage_info(stage)
    n_mod = snaps[0][1].shape[0]
    if len(mods) != n_mod:
        mods = [f"modality {i}" for i in range(n_mod)]
    cols = len(snaps) * len(VIEWS)
    fig, axes = plt.subplots(n_mod, cols, figsize=(1.6 * cols, 1.7 * n_mod + 0.4), squeeze=False)
    for s, (label, weights) in enumerate(snaps):
        for m in range(n_mod):
            slices = central_slices(_normalised(weights[m], eps))
            for v, view in enumerate(VIEWS):
                ax = axes[m][s * len(VIEWS) + v]
                ax.imshow(slices[view], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                if m == 0:
                    ax.set_title(f"{label}\n{view}", fontsize=8)
                if s == 0 and v == 0:
                    ax.set_ylabel(mods[m], fontsize=9)
    fig.suptitle(f"BrainMVP modality templates ({stage.name}, canvas {list(snaps[0][1].shape[1:])})", fontsize=9)
    fig.tight_layout()
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m umdbench_brain.templates_figure",
        description="Draw a brainmvp stage's modality templates (paper Fig. 4).",
    )
    parser.add_argument("path", help="work dir or stages/pretrain-brainmvp-<key> folder")
    parser.add_argument("out", help="PNG to write")
    parser.add_argument(
        "--checkpoints", default="all", help="all (default), none, or iterations separated by commas, e.g. 2000,4000"
    )
    parser.add_argument("--no-final", action="store_true", help="leave out the final artifact")
    args = parser.parse_args(argv)
    chosen = args.checkpoints
    if chosen not in ("all", "none"):
        try:
            chosen = [int(x) for x in chosen.split(",") if x.strip()]
        except ValueError:
            parser.error(f"--checkpoints {args.checkpoints!r}: use all, none or iterations such as 2000,4000")
    try:
        out = render(args.path, args.out, chosen, final=not args.no_final)
    except (FileNotFoundError, KeyError) as exc:
        print(f"templates_figure: error: {exc.args[0] if exc.args else exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # CheckpointError (corrupt file, unverified artifact) and the like
        print(f"templates_figure: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
