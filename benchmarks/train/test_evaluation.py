"""Smoke run of the evaluation bar (`bar_evaluation.py`) on a small CIFAR-format set: the trainer reads the
generated files, its reference set is the test batch, and the step, epoch and evaluation times are measured."""
from benchmarks.train.bar_evaluation import measure, write_cifar10


def test_evaluation_bench_measures_a_cifar_run(tmp_path):
    root = write_cifar10(tmp_path / "data", train=600, test=90)
    r = measure(root, tmp_path / "run", steps=1, probe=100, model="small_cnn", batch_size=64)
    assert (r["train"], r["reference"], r["steps_per_epoch"]) == (600, 90, 9)
    assert 90 <= r["probe"] <= 110 and 0 < r["step"] and r["epoch"] == r["step"] * 9 and r["evaluation"] > 0
