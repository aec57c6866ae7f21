"""The examples run as a user would run them: `python examples/NAME.py`, from a directory of their own."""
import importlib.util
import json
import math
import re
import subprocess
import sys

import pytest

from tests.support.processes import REPO, repo_env


def test_coupled_own_model_example_trains_into_its_run_directory(tmp_path):
    done = subprocess.run([sys.executable, str(REPO / "examples" / "coupled_own_model.py")], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300, env=repo_env(OMP_NUM_THREADS="1"))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    run = tmp_path / "runs" / "own_model"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 40, 80, 120, 160]
    last = records[-1]
    assert 0 < last["cka_cosine/nscl"] <= 1 and last["loss_gap"] <= last["loss_gap_bound"]
    assert (run / "checkpoint.pt").is_file() and (run / "summary.md").read_text().strip() in done.stderr


def _run(name: str, cwd) -> str:
    """Run examples/NAME.py from `cwd` as a user would; its stdout, after checking it exited cleanly."""
    done = subprocess.run([sys.executable, str(REPO / "examples" / name)], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env=repo_env(OMP_NUM_THREADS="1"))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done.stdout


def _number(pattern: str, out: str) -> float:
    """The number that `pattern`'s one group captures in `out` (the test fails if the line is missing)."""
    found = re.search(pattern, out)
    assert found, f"no match for {pattern!r} in:\n{out}"
    return float(found.group(1))


def test_from_lightly_example_switches_and_agrees(tmp_path):
    out = _run("from_lightly.py", tmp_path)
    steps = re.findall(r"\[(shim|native)\] step +(\d+): loss ([\d.]+) \(the other form on this batch: ([\d.]+)\)", out)
    assert [(kind, int(step)) for kind, step, *_ in steps] == [
        (kind, step) for kind in ("shim", "native") for step in (1, 15, 30, 45, 60)]
    assert all(abs(float(loss) - float(other)) < 1e-5 for *_, loss, other in steps)
    first, last = float(steps[0][2]), float(steps[4][2])
    assert last < first - 0.2  # the loop learns
    assert _number(r"between the two runs' loss curves: (\S+)", out) < 1e-5
    assert _number(r"\|loss difference\| = (\S+),", out) < 1e-10
    assert _number(r"max \|gradient difference\| = (\S+)\n", out) < 1e-10
    if importlib.util.find_spec("lightly") is None:
        assert "lightly is not installed" in out
    else:  # lightly's own loss on the same float64 batch
        assert _number(r"lightly's own NTXentLoss: \S+; \|difference from the shim\| = (\S+),", out) < 1e-10


def test_from_supcontrast_example_agrees_and_converts_stacked_views(tmp_path):
    out = _run("from_supcontrast.py", tmp_path)
    shim = _number(r"shim \(SupContrast's SupConLoss\): +(\S+)", out)
    native = _number(r"native clnscl.SupConLoss: +(\S+)", out)
    assert shim > 0 and abs(shim - native) < 1e-5
    assert _number(r"at the defaults .*\|loss difference\| = (\S+),", out) < 1e-5
    assert _number(r"at τ = 0.1: shim / native = (\S+)", out) == pytest.approx(0.1 / 0.07, rel=1e-5)
    assert "raises ValueError:" in out and "torch.stack(z.chunk(2), 1)" in out and "labels.chunk(2)[0]" in out
    converted = _number(r"labels.chunk\(2\)\[0\]\) = (\S+) ", out)
    assert converted == pytest.approx(native, abs=1e-6)


def test_two_towers_example_trains_and_matches_open_clip(tmp_path):
    out = _run("two_towers.py", tmp_path)
    before = _number(r"before training: held-out image -> text top-1 accuracy (\S+)", out)
    after = _number(r"after training: held-out image -> text top-1 accuracy (\S+)", out)
    assert before < 0.1 and after > 0.8  # retrieval learned, from near chance (1/256)
    losses = [float(v) for v in re.findall(r"step +\d+: loss (\S+),", out)]
    assert len(losses) == 5 and losses[-1] < losses[0] / 5
    assert _number(r"agreement on one batch: \|native - shim\| = (\S+)", out) < 1e-10
    if importlib.util.find_spec("open_clip") is None:
        assert "open_clip is not installed" in out
    else:
        assert _number(r"open_clip's own ClipLoss: \S+; \|difference from the shim\| = (\S+)", out) < 1e-10


def test_alignment_example_prints_metrics_and_writes_heatmap(tmp_path):
    out = _run("alignment_of_two_models.py", tmp_path)
    assert "two torchvision ResNet-18s (seeds 1 and 2)" in out
    assert "model a (512, 512), model b (512, 512)" in out  # the 512-d input of the ResNets' fc
    for pattern in (r"cka linear +(\S+)", r"cka cosine +(\S+)", r"cka rbf +(\S+)", r"rsa euclidean, pearson +(\S+)",
                    r"rsa euclidean, spearman +(\S+)"):
        assert 0 < _number(pattern, out) < 1  # two differently seeded models: related, not identical
    assert _number(r"error bound (\S+)\)", out) <= 1e-3
    # pairwise_alignment's values are those of the metrics one by one
    assert _number(r"pairwise_alignment: .*cka_rbf (\S+),", out) == pytest.approx(_number(r"cka rbf +(\S+)", out),
                                                                                  abs=2e-6)
    assert _number(r"pairwise_alignment: rsa_spearman (\S+),", out) == pytest.approx(
        _number(r"rsa euclidean, spearman +(\S+)", out), abs=2e-6)
    # the layer table: the stem, the four stages and the output, each against each, values in (0, 1]
    layers = ["conv1", "layer1", "layer2", "layer3", "layer4", "fc"]
    assert re.search(r"^ +" + " +".join(layers) + "$", out, re.M)
    rows = re.findall(r"^ +(conv1|layer[1-4]|fc)((?: +[\d.]+){6})$", out, re.M)
    assert [name for name, _ in rows] == layers
    table = [[float(v) for v in values.split()] for _, values in rows]
    assert all(0 < v <= 1 for row in table for v in row)
    diagonal = [table[i][i] for i in range(6)]
    assert diagonal[0] > diagonal[4]  # random stems see the same images alike; the deep stages less so
    # layer4's 1×1 maps, average-pooled, are the penultimate features: its entry is step 1's linear CKA, to the
    # table's 3 decimals
    assert diagonal[4] == pytest.approx(_number(r"cka linear +(\S+)", out), abs=6e-4)
    png = tmp_path / "alignment_heatmap.png"
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    assert f"heatmap written to {png.resolve()}" in out
    # model a against itself: every layer's CKA with itself is 1 (float64 sums; printed to 12 decimals)
    itself = re.search(r"3\. model a against itself\n +diagonal: (.*)\n", out)
    assert itself, out
    assert [float(v) for v in itself.group(1).split(", ")] == pytest.approx([1.0] * 6, abs=1e-10)
    # streamed and at once from the same float32 features, both summed in float64 (unit roundoff 1.1e-16; the
    # stream's sums are centred on its first batch's mean, so no large offset cancels): they agree to far better
    # than 1e-10, a bound that a float32 accumulation (unit roundoff 6e-8) in either path would typically exceed
    streamed = _number(r"StreamingAlignment over 512 rows in 8 batches: cka_linear (\S+)", out)
    assert streamed == pytest.approx(_number(r"metrics.cka on the concatenated features: +(\S+)", out), abs=1e-10)
    assert _number(r"\|difference\| = (\S+)", out) <= 1e-10
    # step 1 used the same batches, so the same features: equal to the 6 decimals printed there
    assert streamed == pytest.approx(_number(r"cka linear +(\S+)", out), abs=1e-6)


def test_alignment_example_without_torchvision_says_how_to_install_it(tmp_path):
    blocked = ("import runpy, sys; sys.modules['torchvision'] = None; "  # `import torchvision` raises ImportError
               f"runpy.run_path({str(REPO / 'examples' / 'alignment_of_two_models.py')!r}, run_name='__main__')")
    done = subprocess.run([sys.executable, "-c", blocked], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env=repo_env(OMP_NUM_THREADS="1"))
    assert done.returncode == 1, done.stdout[-2000:] + done.stderr[-3000:]
    assert 'pip install -e ".[vision]"' in done.stderr and "torchvision" in done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""
    assert not (tmp_path / "alignment_heatmap.png").exists()


def _cost(block: str) -> dict[str, float]:
    """The figures of one cost estimate of reproduce_paper.py's dry run, by name."""
    patterns = {
        "forward": r"per view: forward (\S+) FLOP", "view": r"forward \+ backward (\S+) FLOP",
        "image": r"training: (\S+) FLOP per image \(2 views\)", "images": r"× (\d+) images per epoch",
        "epochs": r"× (\d+) epochs ×", "models": r"× (\d+) models =", "training": r"models = (\S+) FLOP\n",
        "loss": r"losses: (\S+) FLOP per step", "steps": r"× (\d+) steps ×", "contrastive": r"× (\d+) contrastive",
        "losses": r"contrastive models = (\S+) FLOP", "evaluations": r"evaluations: (\d+) ×",
        "per_evaluation": r"evaluations: \d+ × (\S+) FLOP", "evaluating": r"loss-gap views\) = (\S+) FLOP",
        "peak": r"throughput: (\S+) TFLOP/s peak", "utilisation": r"× (\S+) % assumed utilisation",
        "sustained": r"= (\S+) TFLOP/s sustained", "total": r"estimate: (\S+) FLOP /", "hours": r"= (\S+) GPU-hours",
    }
    return {key: _number(pattern, block) for key, pattern in patterns.items()}


def test_reproduce_paper_example_estimates_its_cost_and_runs_a_tiny_version(tmp_path):
    out = _run("reproduce_paper.py", tmp_path)
    # the dry run: the plan of configs/cifar100.yaml and the cost of it and of two cheaper variants, each figure
    # the product of the printed ones (to the 5 significant digits printed)
    assert "1200 epochs × 48 steps = 57600 steps" in out and "117 evaluations" in out
    blocks = dict(block.split("] ", 1) for block in out.split("\n\n[")[1:])
    assert list(blocks) == ["paper", "short", "small"]
    hours = {}
    for name, block in blocks.items():
        c = _cost(block)
        assert c["image"] == pytest.approx(2 * c["view"], rel=1e-4)
        assert c["view"] > 2 * c["forward"] > 0  # the backward pass costs more than the forward
        assert c["training"] == pytest.approx(c["image"] * c["images"] * c["epochs"] * c["models"], rel=1e-3)
        assert c["losses"] == pytest.approx(c["loss"] * c["steps"] * c["contrastive"], rel=1e-3)
        assert c["evaluating"] == pytest.approx(c["evaluations"] * c["per_evaluation"], rel=1e-3)
        assert c["total"] == pytest.approx(c["training"] + c["losses"] + c["evaluating"], rel=1e-3)
        assert c["sustained"] == pytest.approx(c["peak"] * c["utilisation"] / 100, rel=1e-3)
        assert c["hours"] > 0 and c["hours"] == pytest.approx(c["total"] / (c["sustained"] * 1e12) / 3600, rel=1e-3)
        assert (c["images"], c["models"], c["contrastive"]) == (49152, 4, 3)
        hours[name] = c["hours"]
    paper = _cost(blocks["paper"])
    assert paper["epochs"] == 1200 and paper["steps"] == 57600 and paper["evaluations"] == 117
    assert 2e9 < paper["forward"] < 3.5e9  # ResNet-50 with the CIFAR stem at 32 px: about 1.3 G multiply-adds
    assert hours["small"] < hours["short"] < hours["paper"]
    # the tiny run: the same objectives through clnscl train's entry point, its records finite
    run = tmp_path / "runs" / "reproduce_paper_tiny"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 11, 22, 33, 44]
    values = [v for r in records for v in r.values() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    assert len(values) > 200 and all(math.isfinite(v) for v in values)
    assert {f"cka_cosine/{m}" for m in ("nscl", "supcon", "ce")} <= set(records[-1])
    assert (run / "summary.md").is_file() and (run / "checkpoint.pt").is_file()
    assert f"tiny run written to {run.resolve()}" in out


def test_reproduce_paper_example_refuses_a_data_root_without_the_data(tmp_path):
    done = subprocess.run([sys.executable, str(REPO / "examples" / "reproduce_paper.py"), "--data-root", str(tmp_path)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300, env=repo_env(OMP_NUM_THREADS="1"))
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    assert "--data-root" in done.stderr and "cifar-100-python/train" in done.stderr
    assert not (tmp_path / "runs").exists()  # nothing trained
