"""checkpoint.pt: written atomically, read back whole from a file or a run directory, loaded with
weights_only=True (a file that would run code when unpickled is refused), clear errors naming the file."""
import json
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


def test_a_resume_that_changes_other_keys_continues_and_says_so(tmp_path, capsys):
    """A trainer's checkpoint holds its whole config; a resume that changes keys outside config.run_keys()
    continues, names each change (old → new) on one stderr line and keeps them in `config_changes`; a
    checkpoint written before the whole config was saved resumes without a word."""
    from clnscl.train.config import Config, run_keys
    from clnscl.train.loop import CoupledTrainer

    base = dict(objectives=["cl", "nscl"], epochs=1, warmup_epochs=0, batch_size=32, num_classes=4,
                reference_size=20, eval_every=2, checkpoint_every=2, device="cpu")
    CoupledTrainer(Config(**base), tmp_path, log=lambda *_: None).run(stop_after=2)
    path, state = load_checkpoint(tmp_path)
    assert state["config"] == Config(**base).to_dict() and set(run_keys()) <= set(state["run"])
    capsys.readouterr()
    changed = Config(**{**base, "eval_every": 3}, grad_clip=1.0, amp=False)
    trainer = CoupledTrainer(changed, tmp_path, log=lambda *_: None)
    records = trainer.run(resume=True, stop_after=3)
    assert trainer.step == 3 and records[-1]["step"] == 3
    assert trainer.config_changes == {"eval_every": [2, 3], "amp": [True, False], "grad_clip": [None, 1.0]}
    lines = [line for line in capsys.readouterr().err.splitlines() if "changed config" in line]
    said = f"resuming {path} with changed config keys: eval_every 2 → 3, amp true → false, grad_clip null → 1.0"
    assert lines == [said]
    assert json.loads(records[-1]["config_changes"]) == trainer.config_changes  # and in the next record
    assert all("config_changes" not in r for r in records[:-1])
    del state["config"]
    save_checkpoint(state, path)
    trainer = CoupledTrainer(changed, tmp_path, log=lambda *_: None)
    trainer.load_checkpoint(path)
    assert trainer.config_changes == {} and "changed config" not in capsys.readouterr().err
