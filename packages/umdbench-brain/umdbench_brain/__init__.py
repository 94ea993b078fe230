"""umdbench-brain: 3-D multi-parametric brain MRI for umdbench, as a separately installed plugin
package (BrainMVP's data family, issue 13). Registered through the ``umdbench`` entry-point group by
:mod:`umdbench_brain.plugin`; importing this package loads neither torch nor MONAI."""

__version__ = "0.1.0"
