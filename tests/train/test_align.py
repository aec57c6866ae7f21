"""`clnscl align`: the alignment of two trained models, equal to what the trainer recorded at the end."""
import json

import pytest

from clnscl import cli

TINY = ["epochs=2", "batch_size=64", "eval_every=4", "warmup_epochs=1", "num_classes=5", "reference_size=60"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("align") / "run"
    assert cli.main(["train", "--out", str(out), *[a for kv in TINY for a in ("--set", kv)]]) == 0
    return out


def _table(text):
    rows = [line.split("|")[1:4] for line in text.splitlines() if line.startswith("| z |") or line.startswith("| h |")]
    return {(r.strip(), k.strip()): float(v) for r, k, v in rows}


def test_align_reproduces_the_last_record(run, capsys):
    capsys.readouterr()
    assert cli.main(["align", str(run), str(run)]) == 0  # anchor cl vs the first other model, nscl
    got = _table(capsys.readouterr().out)
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    for key in ("cka_cosine", "cka_linear", "rsa_pearson", "gap_relative"):
        assert got[("z", key)] == pytest.approx(last[f"{key}/nscl"], abs=2e-6)
        assert got[("h", key)] == pytest.approx(last[f"h/{key}/nscl"], abs=2e-6)


def test_a_model_with_itself_is_perfectly_aligned(run, capsys):
    capsys.readouterr()
    assert cli.main(["align", str(run), str(run), "--model-b", "cl", "--pairwise"]) == 0
    got = _table(capsys.readouterr().out)
    assert got[("z", "cka_cosine")] == pytest.approx(1.0, abs=1e-9)
    assert got[("z", "cka_rbf")] == pytest.approx(1.0, abs=1e-9)
    assert got[("z", "gap_max_abs")] == pytest.approx(0.0, abs=1e-6)


def test_errors_name_what_is_wrong(run, tmp_path, capsys):
    assert cli.main(["align", str(run), str(run), "--model-b", "byol"]) == 2
    assert "byol" in capsys.readouterr().err
    assert cli.main(["align", str(tmp_path / "nothing"), str(run)]) == 2
    assert "nothing" in capsys.readouterr().err


def test_a_checkpoint_without_its_whole_config_aligns_the_same(run, tmp_path, capsys):
    """align rebuilds the run's Config from the checkpoint's saved config or, for a checkpoint written before
    that was saved, from its run keys and data directories, a key it predates taking its default."""
    from clnscl.train.align import run_config
    from clnscl.train.checkpoint import load_checkpoint, save_checkpoint
    from clnscl.train.config import Config, load_config

    _, state = load_checkpoint(run)
    assert run_config(state) == load_config(None, TINY)
    old = {k: v for k, v in state.items() if k not in ("config", "eval_root", "stream")}
    old["run"] = {k: v for k, v in state["run"].items() if k not in ("decode_size", "decode_aspect", "gpu_decode")}
    run_keys_only = [kv for kv in TINY if not kv.startswith("eval_every=")]  # eval_every is not a run key
    assert run_config(old) == load_config(None, run_keys_only) != Config()
    save_checkpoint(old, tmp_path / "old.pt")
    capsys.readouterr()
    assert cli.main(["align", str(run), str(run)]) == 0
    new_table = _table(capsys.readouterr().out)
    assert cli.main(["align", str(tmp_path / "old.pt"), str(tmp_path / "old.pt")]) == 0
    assert _table(capsys.readouterr().out) == new_table


def test_align_of_a_streamed_run_reads_its_images_from_disk(tmp_path, capsys):
    """A run with stream=true: align rebuilds the same reference split, decoding it batch by batch, and
    reproduces the last record."""
    from tests.support.imagetree import image_tree

    tree = image_tree(tmp_path / "tree")
    sets = ["dataset=imagefolder", f"data_root={tree}", "image_size=16", "stream=true", "batch_size=12",
            "epochs=1", "warmup_epochs=0", "eval_every=3", "knn_k=3", "hidden_dim=32", "projector_dim=16"]
    out = tmp_path / "run"
    assert cli.main(["train", "--out", str(out), *[a for kv in sets for a in ("--set", kv)]]) == 0
    capsys.readouterr()
    assert cli.main(["align", str(out), str(out)]) == 0
    text = capsys.readouterr().out
    got = _table(text)
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert "9 samples" in text  # the reference split: round(0.2 · 16) = 3 images of each of 3 classes
    for key in ("cka_cosine", "cka_linear", "rsa_pearson"):
        assert got[("z", key)] == pytest.approx(last[f"{key}/nscl"], abs=2e-6)
