"""On-disk cache of judge replies: one JSON file per request, so reruns cost nothing.

The key is the sha256 of the canonical JSON of everything that shapes a reply: the model name, the
messages and every sampling field (see ChatRequest.payload). The server address is not part of the
key (the same model behind another host gives the same replies) and neither is the API key.
Files live in 256 shard folders (first two hex digits) and are written to a temporary file and
renamed into place, so a crash never leaves a half-written entry behind.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path

logger = logging.getLogger(__name__)

# Bump when the stored value's layout changes: old entries then simply stop matching.
CACHE_FORMAT = 1


def request_key(payload: dict) -> str:
    """sha256 hex digest of the canonical JSON (sorted keys, no spaces) of a request payload."""
    canonical = json.dumps(
        {"cache_format": CACHE_FORMAT, "request": payload},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


class ReplyCache:
    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict | None:
        """The stored value, or None when absent. An unreadable entry counts as absent (logged)."""
        path = self.path(key)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        try:
            value = json.loads(text)
        except json.JSONDecodeError as err:
            # A cache entry is derived data: asking again is the right repair.
            logger.warning("ignoring corrupt cache entry %s (%s); it will be refetched", path, err)
            return None
        if not isinstance(value, dict):
            logger.warning("ignoring cache entry %s: not a JSON object; it will be refetched", path)
            return None
        return value

    def put(self, key: str, value: dict) -> None:
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{key[:8]}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as tmp:
                json.dump(value, tmp, ensure_ascii=False)
            os.replace(tmp_name, path)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise

    def __len__(self) -> int:
        return sum(1 for _ in self.root.glob("??/*.json"))
