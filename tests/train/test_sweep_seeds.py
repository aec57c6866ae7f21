"""`clnscl sweep --seeds`: every value × seed run into its own directory, the mean and spread over the seeds in
the figure, the JSON and the table, and `clnscl report` saying in how many seeds each comparison holds."""
import json
import math
import re
import shutil

import pytest
import yaml

pytest.importorskip("matplotlib")

from clnscl import cli  # noqa: E402
from clnscl.train import sweep as sweep_module  # noqa: E402
from clnscl.train.config import ConfigError, load_config  # noqa: E402
from clnscl.train.records import without_timings  # noqa: E402
from clnscl.train.report import Chance  # noqa: E402
from clnscl.train.report_sweep import agreement, seed_stats  # noqa: E402

# 2 classes, 4 steps, evaluations at steps 1, 2 and 4: enough for the report to judge a run
TINY = ["epochs=1", "batch_size=64", "eval_every=2", "warmup_epochs=0", "num_classes=2", "reference_size=40",
        "objectives=cl,nscl,supcon", "hidden_dim=32", "projector_dim=16"]
VALUES, SEEDS = ("0.2", "0.5"), ("0", "1")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _args(out, *extra):
    return ["sweep", "--factor", "temperature", "--values", ",".join(VALUES), "--seeds", *SEEDS,
            *[a for kv in TINY for a in ("--set", kv)], "--out", str(out), *extra]


def _last(run_dir) -> dict:
    return json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """A 2-value × 2-seed sweep over the temperature."""
    out = tmp_path_factory.mktemp("sweep")
    assert cli.main(_args(out)) == 0
    return out


def test_every_value_and_seed_runs_into_its_own_directory_with_that_seed(swept):
    runs = sorted(p.relative_to(swept).as_posix() for p in swept.glob("*/*/metrics.jsonl"))
    assert runs == [f"temperature={v}/seed={s}/metrics.jsonl" for v in VALUES for s in SEEDS]
    assert not list(swept.glob("temperature=*/metrics.jsonl"))  # the value directories hold no run of their own
    for v in VALUES:
        cfgs = [yaml.safe_load((swept / f"temperature={v}" / f"seed={s}" / "config.yaml").read_text()) for s in SEEDS]
        assert [c.pop("seed") for c in cfgs] == [0, 1]
        assert cfgs[0] == cfgs[1] and cfgs[0]["temperature"] == float(v) and cfgs[0]["seeds"] is None
        finals = [without_timings(_last(swept / f"temperature={v}" / f"seed={s}")) for s in SEEDS]
        assert finals[0]["step"] == finals[1]["step"]
        assert finals[0]["cka_cosine/nscl"] != finals[1]["cka_cosine/nscl"]  # the seeds really differ


def test_the_json_holds_every_seed_and_their_mean_and_interval(swept):
    from scipy.stats import t

    results = json.loads((swept / "sweep_temperature.json").read_text())
    assert set(results) == set(VALUES)
    for v in VALUES:
        entry = results[v]
        assert entry["n"] == 2 and set(entry["seeds"]) == set(SEEDS)
        for s in SEEDS:
            assert entry["seeds"][s] == _last(swept / f"temperature={v}" / f"seed={s}")
        for key in ("cka_cosine/nscl", "cka_cosine/supcon", "weight_div/nscl", "loss_gap", "theory/gap"):
            a, b = (entry["seeds"][s][key] for s in SEEDS)
            assert entry["mean"][key] == pytest.approx((a + b) / 2, rel=1e-12)
            assert (entry["min"][key], entry["max"][key]) == (min(a, b), max(a, b))
            # two seeds: s = |a − b| / √2, half-width t(0.975, 1) · s / √2
            assert entry["ci95"][key] == pytest.approx(t.ppf(0.975, 1) * abs(a - b) / 2, rel=1e-9)
    assert (swept / "sweep_temperature.png").read_bytes()[:8] == PNG_MAGIC
    table = (swept / "sweep_temperature.md").read_text()
    assert "95% Student-t interval" in table and "| temperature | seeds | cka_cosine/nscl |" in table
    mean, ci = results["0.2"]["mean"]["cka_cosine/nscl"], results["0.2"]["ci95"]["cka_cosine/nscl"]
    assert f"| 0.2 | 0, 1 | {mean:.4g} ± {ci:.2g} |" in table


def _final(cka_nscl, cka_supcon, **extra):
    return {"step": 10, "cka_cosine/nscl": cka_nscl, "cka_cosine/supcon": cka_supcon, "weight_div/nscl": 0.1,
            "weight_div/supcon": 0.2, "loss_gap": 0.3, "loss_gap_bound": 2.0, "anchor": "cl", **extra}


def test_the_figure_draws_the_seeds_mean_with_a_min_max_band():
    finals = {0.1: {0: _final(0.9, 0.8), 1: _final(0.7, 0.6), 2: _final(0.8, 0.4)},
              1.0: {0: _final(0.95, 0.9), 1: _final(0.85, 0.7), 2: _final(0.9, 0.8)}}
    fig = sweep_module.figure(finals, factor="temperature")
    cka_ax = fig.axes[0]
    nscl = next(line for line in cka_ax.lines if line.get_label() == "nscl")
    assert list(nscl.get_ydata()) == pytest.approx([0.8, 0.9])
    assert len(cka_ax.collections) == 2  # one band per model
    band = cka_ax.collections[0].get_paths()[0].vertices
    assert band[:, 1].min() == pytest.approx(0.7) and band[:, 1].max() == pytest.approx(0.95)
    assert "min–max" in fig.get_suptitle() and "3 seeds" in fig.get_suptitle()
    one = sweep_module.figure({v: {0: by_seed[0]} for v, by_seed in finals.items()}, factor="temperature")
    assert not one.axes[0].collections and not one.get_suptitle()


def test_seed_stats_of_one_seed_have_no_interval_and_nan_stays_nan():
    stats = seed_stats(finals={3: _final(0.9, 0.8)})
    assert stats["mean"]["cka_cosine/nscl"] == 0.9 and stats["ci95"]["cka_cosine/nscl"] is None
    stats = seed_stats(finals={0: _final(0.9, 0.8), 1: _final(math.nan, 0.7)})
    assert all(math.isnan(stats[k]["cka_cosine/nscl"]) for k in ("mean", "ci95", "min", "max"))
    assert "anchor" not in stats["mean"] and stats["min"]["cka_cosine/supcon"] == 0.7
    stats = seed_stats(finals={0: _final(0.9, 0.8, loss_gap_bound=math.inf), 1: _final(0.9, 0.8)})
    assert stats["mean"]["loss_gap_bound"] == math.inf and math.isnan(stats["ci95"]["loss_gap_bound"])


@pytest.mark.parametrize("override, message", [
    ("seeds=[]", "must not be empty"),
    ("seeds=1,2,1", "duplicate seed"),
    ("seeds=0,-3", "must be >= 0"),
    ("seeds=a", "list of int"),
    ("seeds=0.5", "list of int"),
])
def test_a_bad_seeds_key_is_refused_naming_it(override, message):
    with pytest.raises(ConfigError, match=rf"config key 'seeds'.*{message}"):
        load_config(overrides=[override])


def test_seeds_flag_overrides_the_key_and_is_checked(tmp_path, monkeypatch, capsys):
    assert load_config(overrides=["seeds=2,0"]).seeds == [2, 0] and load_config().seeds is None
    got = []
    monkeypatch.setattr(sweep_module, "sweep", lambda cfg, *args, **kwargs: got.append(cfg.seeds))
    base = ["--factor", "temperature", "--values", "0.2,0.5", "--out", str(tmp_path)]
    assert sweep_module.main([*base, "--set", "seeds=[5,6]"]) == 0
    assert sweep_module.main([*base, "--set", "seeds=[5,6]", "--seeds", "0", "1"]) == 0
    assert got == [[5, 6], [0, 1]]
    assert sweep_module.main([*base, "--seeds", "1", "1"]) == 2
    err = capsys.readouterr().err
    assert "--seeds 1 1" in err and "duplicate seed(s) 1" in err


def _records(cka_nscl, cka_supcon, n=3, acc=0.9):
    """n evaluations of a run ending at the given CKAs; `acc` the probe accuracy of every model."""
    return [{"step": i + 1, "loss/cl": 1.0, "loss/nscl": 1.0, "loss/supcon": 1.0, "cka_cosine/nscl": cka_nscl,
             "cka_cosine/supcon": cka_supcon, "cka_cosine/ce": 0.1, "weight_div/nscl": 0.1, "weight_div/supcon": 0.2,
             "weight_div/ce": 0.3, "loss_gap": 0.3, "loss_gap_bound": 2.0, "anchor": "cl",
             **{f"nccc/{m}": acc for m in ("cl", "nscl", "supcon", "ce")}} for i in range(n)]


def test_agreement_counts_the_seeds_where_a_comparison_holds():
    runs = {"0": _records(0.9, 0.8), "1": _records(0.85, 0.8), "2": _records(0.7, 0.8), "3": _records(0.9, 0.8, n=2),
            "4": _records(0.8, 0.8)}
    a = agreement(runs=runs, chances={}, anchor="cl", better="nscl", worse="supcon")
    assert a.holds == ("0", "1") and a.fails == (("2", 0.7, 0.8), ("4", 0.8, 0.8))  # a tie is not "more aligned"
    assert a.unjudged == (("3", "2 evaluation(s), fewer than 3"),)
    assert str(a) == ("holds in 2/4 judged seeds; not in seed 2 (0.7000 vs 0.8000), seed 4 (0.8000 vs 0.8000); "
                      "not judged in seed(s) 3: 2 evaluation(s), fewer than 3")
    assert agreement(runs=runs, chances={}, anchor="cl", better="supcon", worse="nscl").holds == ("2",)
    # a run whose models are at chance in probe accuracy is not judged
    chance = Chance(classes=10, reference=100)
    runs = {"0": _records(0.9, 0.8), "1": _records(0.9, 0.8, acc=0.1)}
    a = agreement(runs=runs, chances={"0": chance, "1": chance}, anchor="cl", better="nscl", worse="supcon")
    assert a.holds == ("0",) and a.unjudged[0][0] == "1" and "at chance" in a.unjudged[0][1]
    assert str(a).startswith("holds in 1/1 judged seeds; not judged in seed(s) 1: cl, nscl, supcon at chance")


def test_report_of_a_hand_made_sweep_counts_the_seeds(tmp_path, capsys):
    finals = {"0.1": {"0": (0.9, 0.8), "1": (0.9, 0.7), "2": (0.95, 0.9)},
              "0.5": {"0": (0.9, 0.8), "1": (0.6, 0.7), "2": (0.95, 0.9)}}
    for value, by_seed in finals.items():
        for seed, (nscl, supcon) in by_seed.items():
            run = tmp_path / f"temperature={value}" / f"seed={seed}"
            run.mkdir(parents=True)
            (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _records(nscl, supcon)))
    assert cli.main(["report", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    i = lines.index("- nscl more aligned with cl than supcon: not in every seed")
    assert lines[i + 1:i + 3] == ["  - temperature=0.1: holds in 3/3 seeds",
                                  "  - temperature=0.5: holds in 2/3 seeds; not in seed 1 (0.6000 vs 0.7000)"]
    assert "- nscl more aligned with cl than ce: holds in every seed at every value" in lines
    assert "- supcon more aligned with cl than nscl" not in text  # each pair once, in the records' order
    assert "| 0.5 | 0, 1, 2 | 0.8167 ± " in text  # the mean of nscl's CKA over the seeds
    assert (tmp_path / "summary.md").read_text().strip() == text.strip()
    (tmp_path / "temperature=0.5" / "seed=1" / "metrics.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in _records(0.6, 0.7, n=2)))  # now too short to judge
    assert cli.main(["report", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    i = lines.index("- nscl more aligned with cl than supcon: holds in every judged seed")
    assert lines[i + 2] == ("  - temperature=0.5: holds in 2/2 judged seeds; not judged in seed(s) 1: 2 evaluation(s), "
                            "fewer than 3")


def test_report_of_a_one_seed_sweep_names_the_seed_of_its_runs(tmp_path, capsys):
    for value, (nscl, supcon) in (("64", (0.9, 0.8)), ("128", (0.7, 0.8))):
        run = tmp_path / f"batch_size={value}"
        run.mkdir()
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _records(nscl, supcon)))
        (run / "config.yaml").write_text(yaml.safe_dump({"seed": 7, "batch_size": int(value)}))
    assert cli.main(["report", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "Final records of one seed." in lines and "| 64 | 7 | 0.9 | 0.8 | 0.1 | 0.1 | 0.2 | 0.3 | 0.3 |" in lines
    assert "  - batch_size=64: holds in 1/1 seeds" in lines  # values in numeric order
    assert lines[lines.index("  - batch_size=64: holds in 1/1 seeds") + 1] == (
        "  - batch_size=128: holds in 0/1 seeds; not in seed 7 (0.7000 vs 0.8000)")


def test_report_of_a_directory_without_runs_names_what_it_needs(tmp_path, capsys):
    assert cli.main(["report", str(tmp_path)]) == 2
    assert "neither metrics.jsonl nor sweep runs" in capsys.readouterr().err


def test_report_of_the_two_seed_sweep_says_in_how_many_seeds_each_comparison_holds(swept, capsys):
    assert cli.main(["report", str(swept)]) == 0
    text = capsys.readouterr().out
    assert text.startswith("## Sweep report: temperature over 0.2, 0.5, 4 run(s), anchor `cl`")
    for v in VALUES:
        line = next(x for x in text.splitlines() if x.startswith(f"  - temperature={v}: "))
        finals = [_last(swept / f"temperature={v}" / f"seed={s}") for s in SEEDS]
        holds = sum(f["cka_cosine/nscl"] > f["cka_cosine/supcon"] for f in finals)
        match = re.match(rf"  - temperature={v}: holds in (\d)/2 seeds", line)
        assert match or "not judged" in line, line
        if match:
            assert int(match[1]) == holds


def test_resuming_a_two_seed_sweep_keeps_its_finished_runs_and_runs_the_missing_one(swept, tmp_path, capsys):
    out = tmp_path / "sweep"
    shutil.copytree(swept, out)
    missing = out / "temperature=0.5" / "seed=1"
    shutil.rmtree(missing)
    finished = [out / f"temperature={v}" / f"seed={s}" for v in VALUES for s in SEEDS if (v, s) != ("0.5", "1")]
    before = {p: ((p / "checkpoint.pt").stat().st_mtime_ns, (p / "metrics.jsonl").read_bytes()) for p in finished}
    assert cli.main(_args(out)) == 2  # without --resume a directory holding a run is refused
    assert "holds a run" in capsys.readouterr().err
    assert cli.main(_args(out, "--resume", "auto")) == 0
    for p, (mtime, metrics) in before.items():
        assert (p / "checkpoint.pt").stat().st_mtime_ns == mtime and (p / "metrics.jsonl").read_bytes() == metrics
    assert without_timings(_last(missing)) == without_timings(_last(swept / "temperature=0.5" / "seed=1"))
    results = json.loads((out / "sweep_temperature.json").read_text())
    assert results["0.5"]["seeds"]["1"] == _last(missing)


def test_clnscl_train_refuses_the_sweep_key_seeds(tmp_path, capsys):
    from clnscl import cli

    assert cli.main(["train", "--out", str(tmp_path / "run"), "--set", "seeds=[0,1]"]) == 2
    err = capsys.readouterr().err
    assert "seeds" in err and "clnscl sweep --seeds" in err
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
