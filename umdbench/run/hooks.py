"""mmengine hooks of umdbench."""

from __future__ import annotations

import time

from mmengine.hooks import Hook


class ProgressHook(Hook):
    """A short progress line on stdout: iteration, losses, speed, time left.

    mmengine's own LoggerHook still writes the detailed log into the stage's work dir.
    """

    priority = "LOW"

    def __init__(self, title: str, every_seconds: float = 5.0):
        self.title = title
        self.every = every_seconds
        self._last = 0.0
        self._start = 0.0
        self._start_iter = 0

    def before_train(self, runner) -> None:
        self._start = self._last = time.time()
        self._start_iter = runner.iter

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        now = time.time()
        done, total = runner.iter + 1, runner.max_iters
        if now - self._last < self.every and done != total:
            return
        self._last = now
        rate = (done - self._start_iter) / max(now - self._start, 1e-9)
        eta = (total - done) / max(rate, 1e-9)
        values = " ".join(
            f"{k}={float(v.detach() if hasattr(v, 'detach') else v):.3g}" for k, v in (outputs or {}).items()
        )
        print(f"    {self.title}: {done}/{total} it  {rate:.2f} it/s  eta {eta:.0f}s  {values}", flush=True)
