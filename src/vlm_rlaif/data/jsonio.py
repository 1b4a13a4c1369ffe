"""Reading and writing record files: JSON arrays (the public datasets) and JSONL (our outputs).

Every validation error names the file, the line and the field. Writers append one record at a time
and flush, so a killed job leaves a valid prefix; `read_records(..., repair=True)` drops a torn last
line and readers can resume by id.
"""

from __future__ import annotations

import bisect
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from vlm_rlaif.errors import RecordError

R = TypeVar("R", bound=BaseModel)


def _describe(err: ValidationError) -> str:
    parts = []
    for e in err.errors():
        loc = ".".join(str(x) for x in e["loc"]) or "<record>"
        parts.append(f"field '{loc}': {e['msg']}")
    return "; ".join(parts)


def _iter_json_array(path: Path, text: str) -> Iterator[tuple[int, object]]:
    """Yield (line, element) for each element of a top-level JSON array, with its starting line."""
    line_starts = [0] + [i + 1 for i, ch in enumerate(text) if ch == "\n"]
    decoder = json.JSONDecoder()

    def line_of(offset: int) -> int:
        return bisect.bisect_right(line_starts, offset)

    def skip_ws(i: int) -> int:
        while i < len(text) and text[i] in " \t\r\n":
            i += 1
        return i

    i = skip_ws(0)
    if i >= len(text) or text[i] != "[":
        raise RecordError(f"{path}:{line_of(i)}: expected a JSON array of records")
    i = skip_ws(i + 1)
    if i < len(text) and text[i] == "]":
        return
    while True:
        try:
            element, end = decoder.raw_decode(text, i)
        except json.JSONDecodeError as err:
            raise RecordError(f"{path}:{line_of(err.pos)}: invalid JSON: {err.msg}") from None
        yield line_of(i), element
        i = skip_ws(end)
        if i < len(text) and text[i] == ",":
            i = skip_ws(i + 1)
        elif i < len(text) and text[i] == "]":
            return
        else:
            raise RecordError(f"{path}:{line_of(i)}: expected ',' or ']' after a record")


def iter_raw(path: str | Path, *, repair: bool = False) -> Iterator[tuple[int, dict]]:
    """Yield (line number, raw dict) from a .json array or a .jsonl file.

    repair=True tolerates a torn final JSONL line (a job killed mid-write) by skipping it.
    """
    path = Path(path)
    if not path.exists():
        raise RecordError(f"{path}: file not found")
    text = read_utf8(path)
    if path.suffix == ".json" and text.lstrip().startswith("["):
        items: Iterable[tuple[int, object]] = _iter_json_array(path, text)
    elif path.suffix == ".json" and _is_single_json_value(text):
        raise RecordError(f"{path}:1: expected a JSON array of records (or JSON Lines)")
    else:
        items = _iter_jsonl(path, text, repair=repair)
    for line, obj in items:
        if not isinstance(obj, dict):
            raise RecordError(f"{path}:{line}: expected a JSON object, got {type(obj).__name__}")
        yield line, obj


def read_utf8(path: str | Path) -> str:
    """A text file's content; bytes that are not UTF-8 raise RecordError naming the file, line and byte."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        column = err.start - data.rfind(b"\n", 0, err.start)
        raise RecordError(
            f"{path}:{line}: not UTF-8 text (byte 0x{data[err.start]:02x} at column {column}, offset {err.start}); "
            "save the file as UTF-8"
        ) from None


def _is_single_json_value(text: str) -> bool:
    try:
        json.loads(text)
    except json.JSONDecodeError:
        return False
    return True


def _iter_jsonl(path: Path, text: str, *, repair: bool) -> Iterator[tuple[int, object]]:
    lines = text.split("\n")
    for n, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            yield n, json.loads(raw)
        except json.JSONDecodeError as err:
            is_last = all(not rest.strip() for rest in lines[n:])
            if repair and is_last:
                return
            raise RecordError(f"{path}:{n}: invalid JSON: {err.msg}") from None


def read_records(path: str | Path, model: type[R], *, repair: bool = False) -> list[R]:
    """Read and validate every record of `path` as `model`; errors name file, line and field."""
    out = []
    for line, obj in iter_raw(path, repair=repair):
        try:
            out.append(model.model_validate(obj))
        except ValidationError as err:
            rid = obj.get("id", obj.get("question_id"))
            where = f" (id {rid})" if rid is not None else ""
            raise RecordError(f"{path}:{line}{where}: {_describe(err)}") from None
    return out


def write_json_array(path: str | Path, records: Iterable[BaseModel | dict]) -> None:
    """Write a JSON array, one record per line (so errors point at a useful line), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        f.write("[\n")
        first = True
        for rec in records:
            obj = rec.to_json_dict() if hasattr(rec, "to_json_dict") else rec
            f.write(("" if first else ",\n") + json.dumps(obj, ensure_ascii=False))
            first = False
        f.write("\n]\n")
    os.replace(tmp, path)


class JsonlWriter:
    """Append-only JSONL writer: one line per record, flushed (and optionally fsynced) at once.

    On open it truncates a torn last line left by a killed writer, so appending stays valid JSONL.
    """

    def __init__(self, path: str | Path, *, fsync: bool = False):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fsync = fsync
        _truncate_torn_tail(self.path)
        self._f = self.path.open("a", encoding="utf-8")

    def write(self, record: BaseModel | dict) -> None:
        obj = record.to_json_dict() if hasattr(record, "to_json_dict") else record
        self._f.write(json.dumps(obj, ensure_ascii=False) + "\n")
        self._f.flush()
        if self._fsync:
            os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> "JsonlWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _truncate_torn_tail(path: Path) -> None:
    if not path.exists() or path.stat().st_size == 0:
        return
    data = path.read_bytes()
    if data.endswith(b"\n"):
        return
    cut = data.rfind(b"\n") + 1  # 0 when the only line is torn
    with path.open("r+b") as f:
        f.truncate(cut)


def done_ids(path: str | Path, key: str = "id") -> set[str]:
    """Ids already written to a JSONL output (for resuming); tolerates a torn last line."""
    path = Path(path)
    if not path.exists():
        return set()
    return {str(obj[key]) for _, obj in iter_raw(path, repair=True) if key in obj}
