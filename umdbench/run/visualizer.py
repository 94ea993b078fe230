"""The visualiser a stage's Runner logs through: mmengine's, with its drawing canvas made on demand.

A stage logs scalars and its config to the visualiser's backends (local files, TensorBoard, MLflow)
and never draws on an image. mmengine's ``Visualizer`` builds a matplotlib figure in its constructor
all the same, for its drawing methods, and importing matplotlib for it cost every training process
~0.5 CPU-s. Here the figure is built the first time an image is set (every drawing method needs one
set first), so a stage that only logs never imports matplotlib, and one that draws works as before.
"""

from __future__ import annotations

from mmengine.dist import master_only
from mmengine.visualization import Visualizer

__all__ = ["ScalarVisualizer"]


class _FigureNotBuilt:
    """Stands in for the figure until an image is set; the constructor only reads its dpi."""

    def __init__(self, fig_cfg: dict):
        self.dpi = float(fig_cfg.get("dpi", 100))  # matplotlib's default; replaced by the real one

    def get_dpi(self) -> float:
        return self.dpi


class ScalarVisualizer(Visualizer):
    """mmengine's ``Visualizer`` whose matplotlib canvas is built when an image is first set."""

    def _initialize_fig(self, fig_cfg) -> tuple:
        return None, _FigureNotBuilt(fig_cfg), None

    @property
    def canvas_built(self) -> bool:
        return not isinstance(self.fig_save, _FigureNotBuilt)

    @master_only
    def set_image(self, image) -> None:
        if not self.canvas_built:
            self.fig_save_canvas, self.fig_save, self.ax_save = super()._initialize_fig(self.fig_save_cfg)
            self.dpi = self.fig_save.get_dpi()
        super().set_image(image)
