"""`clnscl report` says only what a run supports: a finding on too few evaluations or on probe accuracies at
chance is "not informative" with its reason, summary.md holds the printed summary, and the loss gap and the
similarity gap are named apart in the summary and in the figures."""
import json
import math
import re

import pytest

pytest.importorskip("matplotlib")

from clnscl.train.report import CHANCE_SE, FALLBACK_REFERENCE, main, summary, write_report  # noqa: E402
from tests.train.test_report import _finding, _records, _write  # noqa: E402

N_REF = 400  # reference samples of the synthetic runs: chance + 2 SE = 0.1 + 2·√(0.09/400) = 0.13 at 10 classes


def _run(tmp_path, records, config="dataset: digits\nnum_classes: null\nreference_size: 400\n", classes=None,
         name="run"):
    """The run directory tmp_path/name with metrics.jsonl, config.yaml and (optionally) classes.json."""
    run = _write(tmp_path / name, records)
    (run / "config.yaml").write_text(config)
    if classes is not None:
        (run / "classes.json").write_text(json.dumps(classes))
    return run


def _accuracy(records, model, nccc, knn):
    """The records with `model`'s final NCCC and k-NN accuracies replaced."""
    records[-1].update({f"nccc/{model}": nccc, f"knn/{model}": knn})
    return records


def _with_theory(records, n_ref=359):
    """Theory records of a run of `n_ref` reference samples (within every bound)."""
    for r in records:
        r.update({"theory/gap": 1.0, "theory/gap_bound": 2.0, "theory/gap_trivial": 2.0 * n_ref,
                  "theory/cka_bound": 0.5, "theory/cka_bound_thm1": 0.4, "theory/rsa_bound": 0.5,
                  "theory/rsa_bound_thm1": 0.4, "theory/same_class_max": 0.2, "theory/same_class_limit": 0.3})
    return records


def test_a_run_of_two_evaluations_is_not_informative_because_too_short(tmp_path):
    text = write_report(_run(tmp_path, _records(n=2)))
    for n in (1, 2, 3):
        line = _finding(text, n)
        assert line.startswith(f"- ({n}) not informative:"), line
        assert "the run is too short to say (2 evaluation(s); at least 3 needed)" in line


def test_a_model_at_chance_makes_the_findings_about_it_not_informative(tmp_path):
    threshold = 0.1 + CHANCE_SE * math.sqrt(0.1 * 0.9 / N_REF)
    text = write_report(_run(tmp_path, _accuracy(_records(), "nscl", 0.105, 0.12)))
    assert f"above {threshold:.4f} = 1/10 + 2 binomial SE at {N_REF} reference samples" in text
    for n in (1, 2):  # about nscl
        line = _finding(text, n)
        assert line.startswith(f"- ({n}) not informative:"), line
        assert "probe accuracy at chance level" in line and "nscl 0.1200" in line, line  # its best probe
        assert f"not above {threshold:.4f} = 1/10" in line
    assert _finding(text, 3).startswith("- (3) holds:")  # about the anchor alone
    # the anchor at chance: every finding is about it
    text = write_report(_run(tmp_path, _accuracy(_records(), "cl", 0.1, 0.1), name="b"))
    for n in (1, 2, 3):
        assert _finding(text, n).startswith(f"- ({n}) not informative:") and "cl 0.1000" in _finding(text, n)


def test_one_probe_above_chance_is_enough(tmp_path):
    text = write_report(_run(tmp_path, _accuracy(_records(), "ce", 0.1, 0.14)))
    assert _finding(text, 1).startswith("- (1) holds:")


def test_classes_json_and_theory_records_set_the_chance_level(tmp_path):
    # 2 of the dataset's classes (classes.json), N = 359 from theory/gap_trivial: 0.5 + 2·√(0.25/359) = 0.5528
    recs = _accuracy(_with_theory(_records()), "supcon", 0.54, 0.55)
    text = write_report(_run(tmp_path, recs, config="dataset: digits\nnum_classes: 2\n", classes=[3, 7]))
    assert "above 0.5528 = 1/2 + 2 binomial SE at 359 reference samples" in text
    assert _finding(text, 1).startswith("- (1) not informative:") and "supcon 0.5500" in _finding(text, 1)
    assert _finding(text, 2).startswith("- (2) holds:")
    # neither the records nor config.yaml give the reference set's size: a small one is assumed
    text = write_report(_run(tmp_path, _records(), config="dataset: cifar10\n", name="b"))
    assert f"at {FALLBACK_REFERENCE} reference samples (size unknown, assumed)" in text


def test_without_the_number_of_classes_the_accuracies_are_not_checked(tmp_path):
    text = write_report(_run(tmp_path, _accuracy(_records(), "nscl", 0.0, 0.0), config="dataset: imagefolder\n"))
    assert "the number of classes is unknown" in text
    assert _finding(text, 1).startswith("- (1) holds:")


@pytest.mark.parametrize("n, override", [
    (None, {}),
    (1, {3: {"cka_cosine/supcon": 0.999}}),
    (2, {1: {"cka_cosine/nscl": 0.85}}),
    (3, {2: {"loss_gap": 2.5}}),
])
def test_an_informative_run_still_holds_or_fails(tmp_path, n, override):
    recs = _records(**{str(k): v for k, v in override.items()})
    text = write_report(_run(tmp_path, recs))
    assert f"at {N_REF} reference samples" in text
    for k in (1, 2, 3):
        expect = "does not hold" if k == n else "holds"
        assert _finding(text, k).startswith(f"- ({k}) {expect}:"), _finding(text, k)


def test_summary_md_is_written_and_equals_the_printed_summary(tmp_path, capsys):
    run = _run(tmp_path, _records(n=2))
    assert main([str(run)]) == 0
    printed = capsys.readouterr().out
    assert (run / "summary.md").read_text() == printed
    assert "(1) not informative" in printed
    assert write_report(run) + "\n" == (run / "summary.md").read_text()
    assert sorted(p.name for p in run.iterdir() if p.suffix == ".tmp") == []
    # the metrics file itself as the argument: the summary goes next to it
    (run / "summary.md").unlink()
    assert write_report(run / "metrics.jsonl") + "\n" == (run / "summary.md").read_text()


def _unqualified_gaps(text):
    """Every "gap" in `text` that is not named as the loss gap or the similarity gap."""
    return [text[max(0, m.start() - 30):m.end()] for m in re.finditer(r"\bgap\b", text)
            if not re.search(r"(loss|similarity)[ -]$", text[:m.start()])]


def test_the_loss_gap_and_the_similarity_gap_are_named_apart(tmp_path, monkeypatch):
    from matplotlib.figure import Figure
    from matplotlib.text import Text

    texts = {}
    savefig = Figure.savefig

    def recording(fig, path, *args, **kwargs):
        texts[str(path).rsplit("/", 1)[-1]] = "\n".join(t.get_text() for t in fig.findobj(Text))
        return savefig(fig, path, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", recording)
    text = write_report(_run(tmp_path, _with_theory(_records())))
    assert _unqualified_gaps(text) == []
    assert "the loss gap (CL − NSCL loss of cl)" in _finding(text, 3) and "similarity" not in _finding(text, 3)
    [theorem] = [line for line in text.splitlines() if line.startswith("- Theorem 1:")]
    assert "similarity gap ‖Σ^CL − Σ^NSCL‖_F is 1" in theorem and "loss" not in theorem
    for name in ("loss_gap.png", "theory.png"):
        assert _unqualified_gaps(texts[name]) == [], name
    assert "loss gap" in texts["loss_gap.png"] and "similarity" not in texts["loss_gap.png"]
    assert "similarity gap" in texts["theory.png"] and "loss gap" not in texts["theory.png"]


def test_summary_without_a_run_directory_does_not_check_chance():
    text = summary(_accuracy(_records(), "nscl", 0.1, 0.1))
    assert "not checked against chance" in text and _finding(text, 1).startswith("- (1) holds:")
