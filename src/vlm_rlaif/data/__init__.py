"""Record schemas, readers/writers and path resolution for every data file the stages exchange."""

from vlm_rlaif.data.jsonio import JsonlWriter, done_ids, iter_raw, read_records, write_json_array
from vlm_rlaif.data.paths import resolve_under, resolve_video_source
from vlm_rlaif.data.records import (
    VIDEO_PLACEHOLDER,
    ClipSpec,
    InstructionRecord,
    MCQRecord,
    Output,
    PreferenceRecord,
    QARecord,
    Turn,
    VCGConsistencyRecord,
    VCGRecord,
    strip_placeholder,
)

__all__ = [
    "VIDEO_PLACEHOLDER",
    "ClipSpec",
    "InstructionRecord",
    "JsonlWriter",
    "MCQRecord",
    "Output",
    "PreferenceRecord",
    "QARecord",
    "Turn",
    "VCGConsistencyRecord",
    "VCGRecord",
    "done_ids",
    "iter_raw",
    "read_records",
    "resolve_under",
    "resolve_video_source",
    "strip_placeholder",
    "write_json_array",
]
