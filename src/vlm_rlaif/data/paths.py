"""Resolving the video paths that records hold against a configured video root."""

from __future__ import annotations

from pathlib import Path

from vlm_rlaif.errors import RecordError


def resolve_under(root: str | Path, relative: str, *, where: str = "") -> Path:
    """Resolve `relative` against `root`, refusing any path that escapes the root.

    Absolute paths and `..` components are allowed only if the result stays inside the root; symlinks
    are resolved first so a link cannot be used to escape either.
    """
    root_path = Path(root).resolve()
    candidate = (root_path / relative).resolve()
    if candidate != root_path and root_path not in candidate.parents:
        prefix = f"{where}: " if where else ""
        raise RecordError(f"{prefix}path {relative!r} escapes the video root {str(root_path)!r}")
    return candidate


def resolve_video_source(
    root: str | Path, source: str | list[str], *, where: str = ""
) -> Path | list[Path]:
    """A record's `video` (one path) or `images` (frame paths), resolved under the root."""
    if isinstance(source, list):
        return [resolve_under(root, s, where=where) for s in source]
    return resolve_under(root, source, where=where)


VIDEO_EXTENSIONS = (".mp4", ".webm", ".mkv", ".avi", ".mov", ".gif", ".m4v")


def find_video(root: str | Path, video_name: str, *, where: str = "") -> Path:
    """Benchmarks name videos without an extension (`video_name`): find the file or frame folder.

    Looks for <root>/<video_name> as given (a file or a folder of frames), then with each known
    video extension.
    """
    base = resolve_under(root, video_name, where=where)
    if base.exists():
        return base
    for ext in VIDEO_EXTENSIONS:
        candidate = base.with_name(base.name + ext)
        if candidate.exists():
            return candidate
    prefix = f"{where}: " if where else ""
    raise RecordError(
        f"{prefix}no video named {video_name!r} under {root} "
        f"(tried a frame folder and {', '.join(VIDEO_EXTENSIONS)})"
    )
