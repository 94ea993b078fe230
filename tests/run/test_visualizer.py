"""The stage visualiser builds mmengine's drawing canvas only when an image is set."""

import json

import numpy as np

from umdbench.run.visualizer import ScalarVisualizer


def test_scalars_are_logged_without_a_canvas_and_drawing_builds_one(tmp_path):
    vis = ScalarVisualizer.get_instance(
        "test-scalar-visualizer", vis_backends=[{"type": "LocalVisBackend"}], save_dir=str(tmp_path)
    )
    assert not vis.canvas_built and vis.fig_save_canvas is None
    vis.add_scalars({"loss": 0.5}, step=3)
    (scalars,) = tmp_path.glob("**/scalars.json")
    assert json.loads(scalars.read_text()) == {"loss": 0.5, "step": 3}
    assert not vis.canvas_built

    image = np.zeros((20, 30, 3), dtype=np.uint8)
    vis.set_image(image)
    vis.draw_bboxes(np.array([[2, 2, 12, 12]]), edge_colors="r")
    assert vis.canvas_built and vis.dpi == vis.fig_save.get_dpi()
    drawn = vis.get_image()
    assert drawn.shape == image.shape and drawn.any()  # the box was drawn on the canvas


def test_the_constructor_does_not_build_mmengines_canvas(monkeypatch, tmp_path):
    # mmengine's canvas builder is what imports matplotlib: a stage that only logs must not reach it
    from mmengine.visualization import Visualizer

    def refuse(self, fig_cfg):
        raise AssertionError("the matplotlib canvas was built at construction")

    monkeypatch.setattr(Visualizer, "_initialize_fig", refuse)
    vis = ScalarVisualizer.get_instance(
        "test-no-canvas", vis_backends=[{"type": "LocalVisBackend"}], save_dir=str(tmp_path)
    )
    vis.add_scalars({"loss": 1.0}, step=1)
    assert not vis.canvas_built
