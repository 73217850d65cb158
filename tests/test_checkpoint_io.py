"""The run's own checkpoints reload under torch >= 2.6; foreign ones keep torch's safe default."""

import pickle

import pytest
import torch

from spk_meta.train import RunCheckpointIO, is_trusted_checkpoint


def _checkpoint_with_module():
    # like SchNetPack's: the model itself sits in the hyperparameters
    return {"state_dict": {}, "hyper_parameters": {"model": torch.nn.Linear(2, 1)}}


def test_own_checkpoints_load_foreign_ones_stay_restricted(tmp_path):
    run_dir, elsewhere = tmp_path / "run", tmp_path / "downloads"
    elsewhere.mkdir()
    io = RunCheckpointIO(run_dir=run_dir)
    own = run_dir / "checkpoints" / "last.ckpt"
    io.save_checkpoint(_checkpoint_with_module(), own)
    loaded = io.load_checkpoint(own)
    assert isinstance(loaded["hyper_parameters"]["model"], torch.nn.Linear)

    foreign = elsewhere / "model.ckpt"
    torch.save(_checkpoint_with_module(), foreign)
    assert not is_trusted_checkpoint(foreign)
    with pytest.raises(pickle.UnpicklingError):
        io.load_checkpoint(foreign)
    # the caller can still opt in explicitly
    assert "hyper_parameters" in io.load_checkpoint(foreign, weights_only=False)
    # torch's own default is untouched
    with pytest.raises(pickle.UnpicklingError):
        torch.load(foreign)


def test_checkpoint_in_run_dir_from_an_earlier_process_is_trusted(tmp_path):
    """Resuming: last.ckpt was written by a previous spktrain process in the same run dir."""
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir()
    torch.save(_checkpoint_with_module(), ckpt)
    io = RunCheckpointIO(run_dir=tmp_path)
    assert isinstance(io.load_checkpoint(ckpt)["hyper_parameters"]["model"], torch.nn.Linear)
    assert not is_trusted_checkpoint("https://example.org/model.ckpt")
