"""Checkpoints load without unpickling arbitrary objects; bad files give clear errors."""

import pytest
import torch

from umdbench.errors import CheckpointError
from umdbench.run.checkpoint import load_artifact, safe_torch_load, save_artifact


class Evil:
    def __reduce__(self):
        return (print, ("arbitrary code ran",))


def test_safe_load_refuses_arbitrary_objects(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {}, "payload": Evil()}, path)
    with pytest.raises(CheckpointError, match="allow-list"):
        safe_torch_load(path)


def test_safe_load_accepts_mmengine_style_checkpoint(tmp_path):
    import numpy as np
    from mmengine.logging.history_buffer import HistoryBuffer

    path = tmp_path / "ok.pth"
    buf = HistoryBuffer()
    buf.update(1.5)
    torch.save(
        {"state_dict": {"w": torch.ones(2)}, "message_hub": {"log": {"loss": buf}}, "meta": {"seed": np.int64(3)}}, path
    )
    loaded = safe_torch_load(path)
    assert torch.equal(loaded["state_dict"]["w"], torch.ones(2))


def test_truncated_checkpoint_is_reported(tmp_path):
    path = tmp_path / "trunc.pth"
    torch.save({"w": torch.randn(1000)}, path)
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        safe_torch_load(path)


def test_artifact_roundtrip_and_checksum(tmp_path):
    path = tmp_path / "model.safetensors"
    sha = save_artifact({"encoder.w": torch.arange(6.0).view(2, 3)}, path)
    assert torch.equal(load_artifact(path, sha)["encoder.w"], torch.arange(6.0).view(2, 3))
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="does not match the checksum"):
        load_artifact(path, sha)
