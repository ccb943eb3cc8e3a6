"""Files every layer reads and writes: JSON-lines input checked line by line, writes that a
crash cannot leave half done, and a lock for work that concurrent trials share."""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from harness.config.errors import DataError


def json_lines(path: Path) -> list[tuple[int, dict]]:
    """(line number, object) of every non-blank line of a UTF-8 JSON-lines file. A byte that
    is not UTF-8 (Latin-1 and Windows-1252 files are the usual cause), malformed JSON or a
    line that is not an object is a DataError naming file:line."""
    rows = []
    with Path(path).open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            line = _decode(path, lineno, raw)
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{lineno}: malformed JSON ({exc.msg})") from None
            if not isinstance(obj, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object, got "
                                f"{type(obj).__name__}")
            rows.append((lineno, obj))
    return rows


def utf8_text(path: Path) -> str:
    """The text of a UTF-8 file; a byte that is not UTF-8 is a DataError naming the line."""
    with Path(path).open("rb") as f:
        return "".join(_decode(path, lineno, raw) for lineno, raw in enumerate(f, 1))


def _decode(path: Path, lineno: int, raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{path}:{lineno}: not UTF-8 (byte 0x{raw[exc.start]:02x} at column {exc.start + 1}: "
            f"{exc.reason}); re-encode the file as UTF-8, e.g. iconv -f latin1 -t utf-8 "
            f"{Path(path).name}") from None


def atomic_write_text(path: Path, text: str) -> None:
    """Writes via a temp file in the same folder and os.replace: never a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj: Any, **dump_kwargs: Any) -> None:
    atomic_write_text(path, json.dumps(obj, **dump_kwargs) + "\n")


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on `path` (created if missing) for the block's duration."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
