import numpy as np
import pytest

from vlm_rlaif.data import ClipSpec, InstructionRecord
from vlm_rlaif.data.frames import FrameSampling, FrameStore
from vlm_rlaif.data.records import Turn, to_messages
from vlm_rlaif.errors import RecordError, UserError
from vlm_rlaif.video import write_video


@pytest.fixture
def video_root(tmp_path):
    (tmp_path / "videos").mkdir()
    frames = np.zeros((24, 32, 32, 3), np.uint8)
    for i in range(24):
        frames[i] = i * 10  # a flat grey level identifies each frame through lossy h264
    write_video(frames, tmp_path / "videos" / "a.mp4", fps=8)
    return tmp_path


def _levels(frames):
    return [int(round(f.mean() / 10)) for f in frames]


def test_video_clips_and_keys(video_root):
    store = FrameStore(video_root, FrameSampling(num_frames=12, clip_max_frames=4))
    frames, key = store.video("videos/a.mp4")
    assert frames.shape == (12, 32, 32, 3) and key == "videos/a.mp4@u12"
    assert _levels(frames) == [int(x) for x in np.linspace(0, 23, 12)]
    clips = store.clips("videos/a.mp4")
    assert [k for _, k in clips] == [f"videos/a.mp4@u12/clip{i}of3" for i in range(3)]
    assert sum((_levels(c) for c, _ in clips), []) == _levels(frames)  # clips tile the video in order
    rec = InstructionRecord.model_validate(
        {"id": "r", "video": "videos/a.mp4", "clip": {"index": 2, "count": 3},
         "conversations": [{"from": "human", "value": "<video>\nDescribe."}]}
    )
    clip_frames, clip_key = store.for_record(rec)
    assert clip_key.endswith("clip2of3") and _levels(clip_frames) == _levels(frames[8:])
    assert store.by_name("videos/a")[1] == key


def test_clips_denser_than_the_whole_video_view(video_root):
    """clip_frames: the whole video is sampled sparsely (6 frames) while its clips are cut from a
    denser sampling (24 frames, 3 clips of 8): each clip sees every frame of its third."""
    store = FrameStore(video_root, FrameSampling(num_frames=6, clip_max_frames=8, clip_frames=24))
    frames, key = store.video("videos/a.mp4")
    assert frames.shape[0] == 6 and key == "videos/a.mp4@u6"
    clips = store.clips("videos/a.mp4")
    assert [k for _, k in clips] == [f"videos/a.mp4@u24/clip{i}of3" for i in range(3)]
    assert [_levels(c) for c, _ in clips] == [list(range(0, 8)), list(range(8, 16)), list(range(16, 24))]
    assert store.video("videos/a.mp4")[1] == key  # the denser decode does not replace the whole view
    with pytest.raises(RecordError, match="24 frames with at most 8 per clip make 3 clips"):
        store.clip("videos/a.mp4", ClipSpec(index=0, count=1))


def test_clip_count_mismatch_and_escape(video_root):
    store = FrameStore(video_root, FrameSampling(num_frames=12, clip_max_frames=4))
    with pytest.raises(RecordError, match="f.json:7: record asks for clip 0 of 2.*make 3 clips"):
        store.clip("videos/a.mp4", ClipSpec(index=0, count=2), where="f.json:7")
    with pytest.raises(RecordError, match="escapes the video root"):
        store.video("../outside.mp4", where="f.json:1")
    with pytest.raises(RecordError, match="no video named 'missing'"):
        store.by_name("missing")


def test_to_messages():
    turns = [Turn.model_validate({"from": "human", "value": "<video>\nWhat?"}), Turn.model_validate({"from": "gpt", "value": "That."})]
    assert to_messages(turns) == [{"role": "user", "content": "What?"}, {"role": "assistant", "content": "That."}]


def test_playlists_in_the_root_do_not_read_outside_it(tmp_path):
    """An HLS playlist or concat list under the root names a video outside it: every stage reads
    through FrameStore, which refuses them, with the same error whether the target exists or not."""
    outside = tmp_path / "outside"
    outside.mkdir()
    write_video(np.full((6, 32, 32, 3), 99, np.uint8), outside / "secret.mp4")
    root = tmp_path / "root"
    root.mkdir()
    store = FrameStore(root, FrameSampling(num_frames=4, clip_max_frames=4))
    reasons = {}
    for target in ("secret.mp4", "missing.mp4"):
        hls = f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:1.0,\n{outside / target}\n#EXT-X-ENDLIST\n"
        (root / f"{target}.m3u8").write_text(hls)
        (root / f"{target}.txt").write_text(f"ffconcat version 1.0\nfile {outside / target}\n")
        for name in (f"{target}.m3u8", f"{target}.txt"):
            with pytest.raises(UserError, match="cannot open as a video") as caught:
                store.video(name, where="f.json:3 (id r)")
            reasons.setdefault(name.split(".", 2)[-1], set()).add(str(caught.value).replace(target, "T"))
    assert all(len(r) == 1 for r in reasons.values()), reasons
