"""Data stage: every line checked before anything loads, encodings, and splits that cleaning
leaves too small."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from harness.config.errors import DataError
from harness.stages.data import MIN_SPLIT_ROWS, load_splits, validate_dataset
from harness.stages.model import build_tiny_tokenizer
from harness.tasks import demo


def rows(n: int) -> list[dict]:
    return demo.generate(seed=3, n_train=n, n_val=0, n_test=0)["train"]


def write_jsonl(path: Path, items: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in items))
    return path


@pytest.fixture
def local(compose_cfg, tmp_path):
    return lambda path, *o: compose_cfg(["dataset=local", f"dataset.path={path}", *o], tmp_path).dataset


def test_a_bad_line_anywhere_fails_validation_naming_it(local, tmp_path):
    good = rows(60)
    path = write_jsonl(tmp_path / "d.jsonl", good)
    validate_dataset(local(path))
    lines = path.read_text().splitlines()
    lines[41] = lines[41].replace('"output"', '"answer"')
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"d\.jsonl:42: missing field 'output'"):
        validate_dataset(local(path))


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_latin1_file_is_one_error_naming_file_line_and_byte(local, tmp_path, suffix):
    path = tmp_path / f"tickets{suffix}"
    if suffix == ".csv":
        text = "instruction,output\nTriage,ok\nCaf\xe9 order,late\n"
    else:
        text = '{"instruction": "a", "output": "b"}\n{"instruction": "Caf\xe9", "output": "b"}\n'
    path.write_bytes(text.encode("latin-1"))
    line = 3 if suffix == ".csv" else 2
    with pytest.raises(DataError, match=rf"tickets\{suffix}:{line}: not UTF-8 \(byte 0xe9 at "
                                        r"column \d+.*iconv -f latin1 -t utf-8"):
        validate_dataset(local(path))


def test_cleaning_down_to_too_few_rows_for_a_split_is_an_error(local, tmp_path):
    unique = rows(5)
    path = write_jsonl(tmp_path / "dups.jsonl", unique + [unique[0]] * 145)  # 150 rows
    with pytest.raises(DataError) as err:
        load_splits(local(path), build_tiny_tokenizer(), 512)
    message = str(err.value)
    assert "5 rows are left after cleaning (loaded 150, dedup removed 145)" in message
    assert "no val rows at dataset.val_size=0.05" in message


def test_a_small_split_is_used_with_a_warning_in_log_and_record(local, tmp_path, caplog):
    path = write_jsonl(tmp_path / "small.jsonl", rows(80))
    with caplog.at_level(logging.WARNING, logger="harness.stages.data"):
        splits = load_splits(local(path, "dataset.test_size=10"), build_tiny_tokenizer(), 512)
    assert len(splits.test) == 10 < MIN_SPLIT_ROWS
    warnings = splits.counts["warnings"]
    assert any("the test split has 10 rows" in w for w in warnings), warnings
    assert "the test split has 10 rows" in caplog.text
