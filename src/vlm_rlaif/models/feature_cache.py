"""Cache of pooled visual features: the frozen visual path runs once per video, not once per pass.

The vision tower and projector are frozen in every RLAIF stage (docs/method.md), so a video's pooled
features depend only on (which video and frames, the visual weights). The key is built from the
example's `video_key` (which must name the source *and* the frame sampling, e.g. "v12@uniform50" or
"v12@uniform50/clip1") and a fingerprint of the visual weights, so features of an old checkpoint are
never served for a new one. (VideoLM also recomputes a hit whose token count does not fit the frames.)

Entries live in memory (least recently used evicted first, bounded in bytes) and optionally on disk
(one safetensors file per key, written atomically), so a later stage or a resumed run reuses them.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import OrderedDict
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

log = logging.getLogger(__name__)


def feature_key(video_key: str, fingerprint: str) -> str:
    """The cache key of one video's pooled features under visual weights with this fingerprint."""
    return f"{video_key}|vision={fingerprint}"


def module_fingerprint(modules: dict[str, nn.Module], extra: str = "") -> str:
    """SHA-256 (hex, 16 chars) of the modules' parameters and buffers plus `extra` (e.g. pooling settings)."""
    digest = hashlib.sha256(extra.encode())
    for prefix, module in sorted(modules.items()):
        for name, tensor in sorted(module.state_dict().items()):
            digest.update(f"{prefix}.{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
            # Viewed as bytes so that every dtype (bf16 included) hashes exactly.
            digest.update(tensor.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


class FeatureCache:
    """Pooled features by key, in memory (LRU, at most `max_bytes`) and optionally under `directory`.

    Tensors are stored on the CPU; callers move them to their device. `hits`/`misses` count lookups.
    """

    def __init__(self, max_bytes: int = 1 << 30, directory: str | os.PathLike | None = None):
        self.max_bytes = max_bytes
        self.directory = Path(directory) if directory is not None else None
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
        self._memory: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._bytes = 0
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._memory)

    @property
    def memory_bytes(self) -> int:
        return self._bytes

    def get(self, key: str) -> torch.Tensor | None:
        features = self._memory.get(key)
        if features is not None:
            self._memory.move_to_end(key)
            self.hits += 1
            return features
        features = self._read_disk(key)
        if features is None:
            self.misses += 1
            return None
        self.hits += 1
        self._remember(key, features)
        return features

    def put(self, key: str, features: torch.Tensor) -> None:
        features = features.detach().to("cpu").contiguous()
        self._remember(key, features)
        if self.directory is not None:
            self._write_disk(key, features)

    def clear(self) -> None:
        """Forget the in-memory entries (files on disk stay)."""
        self._memory.clear()
        self._bytes = 0

    def _remember(self, key: str, features: torch.Tensor) -> None:
        size = features.numel() * features.element_size()
        if size > self.max_bytes:
            return
        if key in self._memory:
            old = self._memory.pop(key)
            self._bytes -= old.numel() * old.element_size()
        self._memory[key] = features
        self._bytes += size
        while self._bytes > self.max_bytes:
            _, evicted = self._memory.popitem(last=False)
            self._bytes -= evicted.numel() * evicted.element_size()

    def _path(self, key: str) -> Path:
        assert self.directory is not None
        return self.directory / f"{hashlib.sha256(key.encode()).hexdigest()[:40]}.safetensors"

    def _read_disk(self, key: str) -> torch.Tensor | None:
        if self.directory is None:
            return None
        path = self._path(key)
        if not path.exists():
            return None
        try:
            with safe_open(path, framework="pt") as handle:
                stored_key = (handle.metadata() or {}).get("key")
                features = handle.get_tensor("features") if stored_key == key else None
        except (SafetensorError, OSError) as err:
            # A damaged entry (e.g. a crash mid-write elsewhere) is recomputed, never trusted.
            log.warning("ignoring unreadable feature cache file %s: %s", path, err)
            return None
        if features is None:
            log.warning("ignoring feature cache file %s: it holds another key (%r)", path, stored_key)
        return features

    def _write_disk(self, key: str, features: torch.Tensor) -> None:
        path = self._path(key)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        save_file({"features": features}, tmp, metadata={"key": key})
        os.replace(tmp, path)  # atomic: readers see the old file or the whole new one


__all__ = ["FeatureCache", "feature_key", "module_fingerprint"]
