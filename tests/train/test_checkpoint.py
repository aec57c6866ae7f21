"""checkpoint.pt: written atomically, read back whole from a file or a run directory, loaded with
weights_only=True (a file that would run code when unpickled is refused), clear errors naming the file."""
import os

import pytest
import torch

from clnscl.train.checkpoint import CHECKPOINT_FILE, load_checkpoint, save_checkpoint


class Payload:
    """Not a tensor or a plain container: weights_only refuses to unpickle it."""

    def __reduce__(self):
        return (os.getcwd, ())


def _state():
    gen = torch.Generator().manual_seed(3)
    return {"step": 7, "run": {"objectives": ["cl", "nscl"], "crop_scale": [0.6, 1.0], "num_classes": None},
            "models": [{"w": torch.randn(3, 2, generator=gen)}], "augment_rng": gen.get_state(),
            "optimizers": [torch.optim.SGD([torch.zeros(2, requires_grad=True)], lr=0.1, momentum=0.9).state_dict()]}


def test_a_saved_state_loads_back_from_the_file_or_its_directory(tmp_path):
    state = _state()
    path = save_checkpoint(state, tmp_path / CHECKPOINT_FILE)
    assert path == tmp_path / CHECKPOINT_FILE and not list(tmp_path.glob("*.tmp"))
    for where in (path, tmp_path):
        got_path, got = load_checkpoint(where)
        assert got_path == path and got["step"] == 7 and got["run"] == state["run"]
        assert torch.equal(got["models"][0]["w"], state["models"][0]["w"])
        assert torch.equal(got["augment_rng"], state["augment_rng"])
        assert got["optimizers"][0]["param_groups"][0]["momentum"] == 0.9


def test_a_file_that_would_run_code_is_refused(tmp_path):
    state = {**_state(), "extra": Payload()}
    torch.save(state, tmp_path / CHECKPOINT_FILE)
    with pytest.raises(ValueError, match=r"checkpoint .*checkpoint\.pt is corrupt or not a clnscl checkpoint"):
        load_checkpoint(tmp_path)


def test_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint at .*nothing"):
        load_checkpoint(tmp_path / "nothing")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pt is corrupt"):
        load_checkpoint(tmp_path / "junk.pt")
    torch.save({"step": 1, "run": {}}, tmp_path / "partial.pt")
    with pytest.raises(ValueError, match="partial.pt .*no models"):
        load_checkpoint(tmp_path / "partial.pt")
