"""metrics.jsonl, the one reader and writer: records appended line by line, a line cut short by a kill dropped
with a note, a bad line elsewhere an error naming the file and line; rewritten atomically; metrics.csv."""
import csv
import json

import pytest

from clnscl.train.records import append_record, read_records, rewrite_records, write_csv

RECORDS = [{"step": 1, "loss/cl": 5.5, "anchor": "cl"}, {"step": 2, "loss/cl": 4.25, "knn/cl": 0.5}]


def test_appended_records_read_back(tmp_path):
    path = tmp_path / "metrics.jsonl"
    with path.open("a") as sink:
        for rec in RECORDS:
            append_record(sink, rec)
    assert read_records(path) == (RECORDS, [])


def test_a_truncated_last_line_is_dropped_with_a_note(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(json.dumps(RECORDS[0]) + "\n" + json.dumps(RECORDS[1])[:9])
    records, notes = read_records(path)
    assert records == RECORDS[:1] and len(notes) == 1 and "truncated last line (2)" in notes[0]


def test_a_bad_line_elsewhere_or_a_missing_file_raises(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1\n' + json.dumps(RECORDS[1]) + "\n")
    with pytest.raises(ValueError, match=r"metrics\.jsonl, line 1: not valid JSON"):
        read_records(path)
    path.write_text('[1, 2]\n{"step": 2}\n')
    with pytest.raises(ValueError, match="line 1: expected a JSON object with a 'step' key"):
        read_records(path)
    with pytest.raises(FileNotFoundError, match="no metrics file at"):
        read_records(tmp_path / "missing.jsonl")


def test_rewrite_replaces_the_file_whole(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(json.dumps(RECORDS[0]) + "\n" + '{"step": 2, "cut')
    rewrite_records(path, RECORDS[:1])
    assert path.read_text() == json.dumps(RECORDS[0]) + "\n" and not list(tmp_path.glob("*.tmp"))


def test_csv_has_a_column_per_key_in_order_of_first_appearance(tmp_path):
    write_csv(RECORDS, tmp_path / "metrics.csv")
    with (tmp_path / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["step", "loss/cl", "anchor", "knn/cl"]
    assert rows[1] == {"step": "2", "loss/cl": "4.25", "anchor": "", "knn/cl": "0.5"}
