"""Video I/O: decoding with seeking (PyAV; torchcodec when present), frame folders, sampling, clips.

    video = load_video("clip.mp4", num_frames=50)      # the paper's 50 uniform frames
    clips = split_clips(len(video.indices), 20)        # 17/17/16 frame positions for clip context
"""

from vlm_rlaif.video.load import LoadFailure, LoadReport, load_video, load_videos, probe_video
from vlm_rlaif.video.sampling import sample_fps, sample_uniform, split_clips
from vlm_rlaif.video.torchcodec_decode import torchcodec_available
from vlm_rlaif.video.types import Video, VideoLoadError
from vlm_rlaif.video.write import write_video

__all__ = [
    "LoadFailure",
    "LoadReport",
    "Video",
    "VideoLoadError",
    "load_video",
    "load_videos",
    "probe_video",
    "sample_fps",
    "sample_uniform",
    "split_clips",
    "torchcodec_available",
    "write_video",
]
