"""The toy world's ground truth and rendering: determinism, physical consistency, pixels."""

import json

import numpy as np
import pytest

from vlm_rlaif.errors import ConfigError
from vlm_rlaif.toyworld import ToyWorldConfig, Truth, render, sample_truth
from vlm_rlaif.toyworld.lexicon import BACKGROUND, OPPOSITE, PALETTE, WALL_OF
from vlm_rlaif.toyworld.world import ObjectState, ObjectTruth

CFG = ToyWorldConfig()
TRUTHS = [sample_truth(CFG, i) for i in range(150)]


def test_same_seed_and_index_give_the_same_truth_and_frames():
    a, b = sample_truth(CFG, 17), sample_truth(ToyWorldConfig(), 17)
    assert a.to_dict() == b.to_dict()
    assert np.array_equal(render(a), render(b))
    assert sample_truth(ToyWorldConfig(seed=1), 17).to_dict() != a.to_dict()


def test_video_does_not_depend_on_other_videos():
    # Sampling other videos first (or none) changes nothing: each index has its own generator.
    alone = sample_truth(CFG, 40).to_dict()
    for i in range(5):
        sample_truth(CFG, i)
    assert sample_truth(CFG, 40).to_dict() == alone


def test_truth_round_trips_through_json():
    t = TRUTHS[3]
    again = Truth.from_dict(json.loads(json.dumps(t.to_dict())))
    assert again == t


def test_world_has_variety():
    kinds = {e.type for t in TRUTHS for e in t.events}
    assert kinds == {"appear", "disappear", "change_colour", "stop", "start", "bounce"}
    assert {len(t.objects) for t in TRUTHS} == {1, 2, 3}
    brief = [o for t in TRUTHS for o in t.objects if o.last - o.first + 1 < CFG.min_visible_frames]
    assert brief, "the brief-object knob produced no brief object"
    flashes = [t for t in TRUTHS if any(len([e for e in t.events if e.type == "change_colour" and e.object == o.id]) == 2
                                        for o in t.objects)]
    assert flashes, "the brief-colour knob produced no colour flash"
    shared = [t for t in TRUTHS if len(t.objects) > 1 and (
        len({o.shape for o in t.objects}) < len(t.objects) or len({o.colours[0] for o in t.objects}) < len(t.objects))]
    assert len(shared) >= 15, "objects sharing a colour or shape should be common"
    assert all(t.objects[0].first == 0 for t in TRUTHS), "no video may open empty"


@pytest.mark.parametrize("t", TRUTHS[:60], ids=lambda t: t.video_id)
def test_states_agree_with_events(t: Truth):
    clip_starts = {c[0] for c in t.clips}
    planned = [e for e in t.events if e.type != "bounce"]
    assert [(e.t, e.object) for e in t.events] == sorted((e.t, e.object) for e in t.events)
    for x, e in enumerate(planned):
        assert e.t not in clip_starts, "planned events never sit on a clip's first frame"
        assert all(abs(e.t - f.t) >= CFG.min_event_gap for f in planned[x + 1:])
    for o in t.objects:
        # At most one change of motion (or appearance) per object and frame; a colour change may share it.
        own = {e.t: e for e in t.events if e.object == o.id and e.type != "change_colour"}
        for frame in range(t.frames):
            st = t.states[frame][o.id]
            assert st.visible == (o.first <= frame <= o.last)
            if not st.visible:
                continue
            assert o.radius <= st.x <= t.size - o.radius and o.radius <= st.y <= t.size - o.radius
            if frame == o.first:
                assert (own.get(frame) is not None and own[frame].type == "appear") == (frame > 0)
                continue
            before = t.states[frame - 1][o.id]
            e = own.get(frame)
            changed_colour = st.colour != before.colour
            assert changed_colour == any(x.t == frame and x.type == "change_colour" and x.object == o.id
                                         for x in t.events)
            if e is not None and e.type == "stop":
                assert st.motion == "still" and (st.x, st.y) == (before.x, before.y)
            elif e is not None and e.type == "bounce":
                assert st.motion == OPPOSITE[before.motion] and e.wall == WALL_OF[before.motion]
            elif e is not None and e.type == "start":
                assert before.motion == "still" and st.motion == e.direction
            else:
                assert st.motion == before.motion
            moved = (st.x, st.y) != (before.x, before.y)
            assert moved == (st.motion != "still")
        if o.last < t.frames - 1:
            assert own[o.last + 1].type == "disappear"


@pytest.mark.parametrize("t", TRUTHS[:60], ids=lambda t: t.video_id)
def test_objects_never_overlap_and_same_shapes_never_share_a_colour(t: Truth):
    for a in t.objects:
        for b in t.objects:
            if a.id >= b.id:
                continue
            if a.shape == b.shape:
                assert not set(a.colours) & set(b.colours), "colour + shape must name one object"
            for frame in range(t.frames):
                sa, sb = t.states[frame][a.id], t.states[frame][b.id]
                if sa.visible and sb.visible:
                    assert np.hypot(sa.x - sb.x, sa.y - sb.y) >= 1.3 * (a.radius + b.radius)


def _one_object(shape: str, colour: str, size: int = 32) -> Truth:
    obj = ObjectTruth(0, shape, "big", 5.0, [colour], 0, 0, 1.0)
    return Truth("x", 0, 0, 1, 8.0, size, [[0]], [obj], [], [[ObjectState(16.0, 16.0, colour, True, "still")]])


def test_render_draws_the_shape_in_its_colour_with_antialiased_edges():
    frames = render(_one_object("circle", "red"))
    assert frames.shape == (1, 32, 32, 3) and frames.dtype == np.uint8
    assert tuple(frames[0, 16, 16]) == PALETTE["red"]
    assert tuple(frames[0, 2, 2]) == BACKGROUND
    red = frames[0, :, :, 0].astype(int)
    partial = (red > BACKGROUND[0] + 10) & (red < PALETTE["red"][0] - 10)
    assert partial.sum() >= 8, "edges should be anti-aliased (partially covered pixels)"


def test_shapes_are_distinguishable_by_their_masks():
    masks = {s: render(_one_object(s, "white"))[0, :, :, 0] > 128 for s in ("circle", "square", "triangle", "diamond")}
    areas = {s: int(m.sum()) for s, m in masks.items()}
    assert max(areas.values()) < 1.6 * min(areas.values()), "shapes of one radius look about equally big"
    shapes = list(masks)
    for i, a in enumerate(shapes):
        for b in shapes[i + 1:]:
            assert (masks[a] != masks[b]).sum() >= 8, f"{a} and {b} render alike"
    # Triangles point up: the top row of the shape is narrower than the bottom row.
    rows = np.nonzero(masks["triangle"].any(axis=1))[0]
    assert masks["triangle"][rows[0]].sum() < masks["triangle"][rows[-1]].sum()


def test_config_rejects_bad_values():
    with pytest.raises(ConfigError, match="size"):
        ToyWorldConfig(size=100)
    with pytest.raises(ConfigError, match="unknown colours"):
        ToyWorldConfig(colours=["red", "green", "mauve"])
    with pytest.raises(ConfigError, match="split fractions"):
        ToyWorldConfig(sft_fraction=0.9)
    with pytest.raises(ConfigError, match="appear_prob"):
        ToyWorldConfig(appear_prob=1.5)


def test_larger_frames_and_other_clip_lengths_work():
    cfg = ToyWorldConfig(size=48, frames=30, clip_max_frames=10, seed=3)
    t = sample_truth(cfg, 0)
    assert [len(c) for c in t.clips] == [10, 10, 10]
    assert render(t).shape == (30, 48, 48, 3)
