"""The toy world's ground truth: sampling a video's objects, motions and timed events, and the
Truth object that texts, rendering and the oracle all read.

Video `index` under `seed` draws from its own generator (numpy SeedSequence [seed, index]), so video
i is the same whatever the number of videos generated.

Frame-time conventions (every consumer relies on them):
- an object is visible on frames first..last (inclusive); `appear` happens at t = first (> 0),
  `disappear` at t = last + 1 (< frames): from that frame on it is gone;
- an event at frame t changes the state from frame t on (colour at t is the new colour; `stop` at t
  means the position at t equals the one at t-1; `start` at t means it has moved at t);
- `bounce` at t: the move into frame t hit a wall; the position is reflected and the direction at
  t is the reversed one;
- `motion` of an object at frame t is the direction of its move into frame t ("still" if none), and
  at its first visible frame the direction it sets off in.
Planned events (all but bounces) are min_event_gap frames apart and never on a clip's first frame,
so every planned event lies inside one clip of the feedback context.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from vlm_rlaif.toyworld.config import ToyWorldConfig
from vlm_rlaif.toyworld.lexicon import DIRECTIONS, OPPOSITE, WALL_OF
from vlm_rlaif.video import split_clips

_STEP = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0)}


@dataclass
class ObjectTruth:
    id: int
    shape: str
    size: str  # "small" | "big"
    radius: float  # pixels
    colours: list[str]  # every colour it shows, in order of first showing
    first: int  # first visible frame
    last: int  # last visible frame (inclusive)
    speed: float  # pixels per frame while moving


@dataclass
class Event:
    t: int
    type: str
    object: int
    colour: str | None = None  # change_colour: the new colour
    from_colour: str | None = None  # change_colour: the colour before
    direction: str | None = None  # start, bounce: the direction from t on
    wall: str | None = None  # bounce: left | right | top | bottom


@dataclass
class ObjectState:
    x: float
    y: float
    colour: str
    visible: bool
    motion: str  # a direction or "still"


@dataclass
class Truth:
    video_id: str
    index: int
    seed: int
    frames: int
    fps: float
    size: int
    clips: list[list[int]]  # frame positions of each feedback-context clip
    objects: list[ObjectTruth]
    events: list[Event]  # sorted by (t, object)
    states: list[list[ObjectState]]  # states[t][object id]
    split: str = ""

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Truth":
        return cls(
            video_id=data["video_id"], index=data["index"], seed=data["seed"], frames=data["frames"],
            fps=data["fps"], size=data["size"], clips=data["clips"],
            objects=[ObjectTruth(**o) for o in data["objects"]],
            events=[Event(**e) for e in data["events"]],
            states=[[ObjectState(**s) for s in row] for row in data["states"]],
            split=data.get("split", ""),
        )

    # ------------------------------------------------------------------ queries over a frame span
    def span_of_clip(self, clip: int) -> tuple[int, int]:
        return self.clips[clip][0], self.clips[clip][-1]

    @property
    def whole(self) -> tuple[int, int]:
        return 0, self.frames - 1

    def visible_frames(self, obj: int, span: tuple[int, int]) -> list[int]:
        o = self.objects[obj]
        return list(range(max(o.first, span[0]), min(o.last, span[1]) + 1))

    def objects_in(self, span: tuple[int, int]) -> list[int]:
        return [o.id for o in self.objects if self.visible_frames(o.id, span)]

    def events_in(self, span: tuple[int, int]) -> list[int]:
        """Indices into self.events of the events at frames inside span."""
        return [i for i, e in enumerate(self.events) if span[0] <= e.t <= span[1]]

    def colours_in(self, obj: int, span: tuple[int, int]) -> list[str]:
        seen: list[str] = []
        for t in self.visible_frames(obj, span):
            c = self.states[t][obj].colour
            if c not in seen:
                seen.append(c)
        return seen

    def motion_segments(self, obj: int, span: tuple[int, int]) -> list[tuple[int, int, str]]:
        """(first frame, last frame, motion) runs of constant motion while visible inside span."""
        segments: list[tuple[int, int, str]] = []
        for t in self.visible_frames(obj, span):
            m = self.states[t][obj].motion
            if segments and segments[-1][2] == m and segments[-1][1] == t - 1:
                segments[-1] = (segments[-1][0], t, m)
            else:
                segments.append((t, t, m))
        return segments

    def colour_at(self, obj: int, t: int) -> str:
        return self.states[t][obj].colour


# ---------------------------------------------------------------------- sampling


def video_id_of(index: int) -> str:
    return f"toy_{index:05d}"


def sample_truth(cfg: ToyWorldConfig, index: int) -> Truth:
    """The ground truth of video `index`: deterministic in (cfg, index), independent of other videos."""
    rng = np.random.default_rng([cfg.seed, index])
    clips = split_clips(cfg.frames, cfg.clip_max_frames)
    planner = _Planner(cfg, rng, clip_starts={c[0] for c in clips})
    n_objects = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
    for _ in range(n_objects):
        planner.add_object()
    if not planner.objects:  # cannot happen for sane configs; fail loudly rather than write empty videos
        raise RuntimeError(f"video {index}: could not place any object")
    states, bounces = planner.simulate_all()
    events = sorted(planner.planned_events + bounces, key=lambda e: (e.t, e.object, e.type))
    return Truth(
        video_id=video_id_of(index), index=index, seed=cfg.seed, frames=cfg.frames, fps=cfg.fps,
        size=cfg.size, clips=clips, objects=planner.objects, events=events, states=states,
    )


@dataclass
class _Plan:
    obj: ObjectTruth
    x0: float
    y0: float
    direction: str | None  # initial direction; None = still
    motion_events: list[Event] = field(default_factory=list)  # stop / start
    colour_events: list[Event] = field(default_factory=list)


class _Planner:
    """Adds objects one at a time: attributes, visibility, events at free frames, a trajectory that
    keeps clear of the objects already placed."""

    def __init__(self, cfg: ToyWorldConfig, rng: np.random.Generator, clip_starts: set[int]):
        self.cfg, self.rng, self.clip_starts = cfg, rng, clip_starts
        self.T, self.S = cfg.frames, float(cfg.size)
        self.plans: list[_Plan] = []
        self.tracks: list[tuple[np.ndarray, list[Event]]] = []  # per plan: positions (T, 2), bounces
        self.used_times: list[int] = []

    @property
    def objects(self) -> list[ObjectTruth]:
        return [p.obj for p in self.plans]

    @property
    def planned_events(self) -> list[Event]:
        out = []
        for p in self.plans:
            o = p.obj
            if o.first > 0:
                out.append(Event(o.first, "appear", o.id))
            if o.last < self.T - 1:
                out.append(Event(o.last + 1, "disappear", o.id))
            out += p.motion_events + p.colour_events
        return out

    # -------------------------------------------------------------- time slots
    def _free(self, t: int, taken: list[int]) -> bool:
        return t not in self.clip_starts and all(abs(t - u) >= self.cfg.min_event_gap for u in taken)

    def _pick_time(self, lo: int, hi: int, taken: list[int]) -> int | None:
        options = [t for t in range(max(lo, 1), min(hi, self.T - 1) + 1) if self._free(t, taken)]
        return int(self.rng.choice(options)) if options else None

    # -------------------------------------------------------------- one object
    def add_object(self) -> None:
        for _ in range(6):
            plan, times = self._sample_plan(len(self.plans))
            for _ in range(25):
                track = self._simulate(plan)
                if track is not None and self._clear_of_others(plan, track[0]):
                    self.plans.append(plan)
                    self.tracks.append(track)
                    self.used_times = times
                    return
                self._resample_start(plan)

    def _attributes(self) -> tuple[str, str]:
        cfg, rng = self.cfg, self.rng
        used_shapes = {p.obj.shape for p in self.plans}
        used_colours = {c for p in self.plans for c in p.obj.colours}
        if self.plans and rng.random() < cfg.shared_attribute_prob:
            other = self.plans[int(rng.integers(len(self.plans)))].obj
            if rng.random() < 0.5:  # same colour, another shape
                shapes = [s for s in cfg.shapes if s != other.shape and s not in used_shapes] or \
                         [s for s in cfg.shapes if s != other.shape]
                return str(rng.choice(shapes)), other.colours[0]
            # same shape, another colour (same-shape objects never share any colour)
            colours = [c for c in cfg.colours if c not in used_colours]
            return other.shape, str(rng.choice(colours))
        shapes = [s for s in cfg.shapes if s not in used_shapes] or list(cfg.shapes)
        shape = str(rng.choice(shapes))
        taken = {c for p in self.plans if p.obj.shape == shape for c in p.obj.colours}
        colours = [c for c in cfg.colours if c not in used_colours] or \
                  [c for c in cfg.colours if c not in taken]
        return shape, str(rng.choice(colours))

    def _sample_plan(self, obj_id: int) -> tuple[_Plan, list[int]]:
        cfg, rng, T = self.cfg, self.rng, self.T
        times = list(self.used_times)
        shape, colour = self._attributes()
        size = "big" if rng.random() < 0.5 else "small"
        radius = (cfg.big_radius if size == "big" else cfg.small_radius) * self.S
        speed = float(rng.uniform(cfg.min_speed, cfg.max_speed)) * self.S

        # visibility (the first object is there from the first frame, so no video opens empty)
        first, last = 0, T - 1
        if obj_id > 0 and rng.random() < cfg.brief_object_prob:
            length = int(rng.integers(cfg.brief_min_frames, cfg.brief_max_frames + 1))
            starts = [t for t in range(1, T - length) if self._free(t, times)
                      and self._free(t + length, times + [t])]
            if starts:
                first = int(rng.choice(starts))
                last = first + length - 1
                times += [first, last + 1]
        else:
            if obj_id > 0 and rng.random() < cfg.appear_prob:
                t = self._pick_time(1, T - cfg.min_visible_frames, times)
                if t is not None:
                    first = t
                    times.append(t)
            if rng.random() < cfg.disappear_prob:
                t = self._pick_time(first + cfg.min_visible_frames, T - 1, times)
                if t is not None:
                    last = t - 1
                    times.append(t)
        brief = last - first + 1 < cfg.min_visible_frames

        obj = ObjectTruth(obj_id, shape, size, float(radius), [colour], first, last, speed)
        direction = str(rng.choice(DIRECTIONS)) if rng.random() < cfg.moving_prob else None
        plan = _Plan(obj, 0.0, 0.0, direction)
        self._resample_start(plan)
        if brief:
            return plan, times

        # motion events: one stop (moving) or one start (still)
        if direction is not None and rng.random() < cfg.stop_prob:
            t = self._pick_time(first + 3, last - 2, times)
            if t is not None:
                plan.motion_events.append(Event(t, "stop", obj_id))
                times.append(t)
        elif direction is None and rng.random() < cfg.start_prob:
            t = self._pick_time(first + 2, last - 3, times)
            if t is not None:
                plan.motion_events.append(Event(t, "start", obj_id, direction=str(rng.choice(DIRECTIONS))))
                times.append(t)

        # colour: one lasting change, or a brief flash (change and change back)
        same_shape_colours = {c for p in self.plans if p.obj.shape == shape for c in p.obj.colours}
        new_colours = [c for c in cfg.colours if c != colour and c not in same_shape_colours]
        if new_colours and rng.random() < cfg.brief_colour_prob:
            k = int(rng.integers(cfg.brief_min_frames, cfg.brief_max_frames + 1))
            starts = [t for t in range(first + 1, last - k + 1) if self._free(t, times)
                      and self._free(t + k, times + [t])]
            if starts:
                t = int(rng.choice(starts))
                new = str(rng.choice(new_colours))
                plan.colour_events += [Event(t, "change_colour", obj_id, colour=new, from_colour=colour),
                                       Event(t + k, "change_colour", obj_id, colour=colour, from_colour=new)]
                obj.colours.append(new)
                times += [t, t + k]
        elif new_colours and rng.random() < cfg.colour_change_prob:
            t = self._pick_time(first + 2, last - 1, times)
            if t is not None:
                new = str(rng.choice(new_colours))
                plan.colour_events.append(Event(t, "change_colour", obj_id, colour=new, from_colour=colour))
                obj.colours.append(new)
                times.append(t)
        return plan, times

    def _resample_start(self, plan: _Plan) -> None:
        margin = plan.obj.radius + 1.0
        plan.x0 = float(self.rng.uniform(margin, self.S - margin))
        plan.y0 = float(self.rng.uniform(margin, self.S - margin))

    # -------------------------------------------------------------- trajectories
    def _simulate(self, plan: _Plan) -> tuple[np.ndarray, list[Event]] | None:
        o = plan.obj
        pos = np.zeros((self.T, 2))
        bounces: list[Event] = []
        x, y = plan.x0, plan.y0
        direction = plan.direction
        lo, hi = o.radius + 0.5, self.S - o.radius - 0.5
        for t in range(self.T):
            if o.first < t <= o.last:
                for e in plan.motion_events:
                    if e.t == t:
                        direction = e.direction if e.type == "start" else None
                if direction is not None:
                    dx, dy = _STEP[direction]
                    x, y = x + dx * o.speed, y + dy * o.speed
                    coord = x if dx else y
                    if coord < lo or coord > hi:
                        wall = WALL_OF[direction]
                        coord = 2 * lo - coord if coord < lo else 2 * hi - coord
                        if dx:
                            x = coord
                        else:
                            y = coord
                        direction = OPPOSITE[direction]
                        bounces.append(Event(t, "bounce", o.id, direction=direction, wall=wall))
            pos[t] = (x, y)
        # A bounce on the same frame as another of this object's events would make one frame carry
        # two changes of motion; such trajectories are resampled.
        own = {e.t for e in plan.motion_events} | {o.first, o.last + 1}
        if any(b.t in own or b.t - 1 in own for b in bounces):
            return None
        return pos, bounces

    def _clear_of_others(self, plan: _Plan, pos: np.ndarray) -> bool:
        o = plan.obj
        for other, (other_pos, _) in zip(self.plans, self.tracks):
            lo, hi = max(o.first, other.obj.first), min(o.last, other.obj.last)
            if lo > hi:
                continue
            # 1.3 x radius bounds every shape (square corners, triangle apex) plus a pixel of air.
            need = 1.3 * (o.radius + other.obj.radius) + 1.0
            dist = np.linalg.norm(pos[lo:hi + 1] - other_pos[lo:hi + 1], axis=1)
            if (dist < need).any():
                return False
        return True

    def simulate_all(self) -> tuple[list[list[ObjectState]], list[Event]]:
        states: list[list[ObjectState]] = [[] for _ in range(self.T)]
        all_bounces: list[Event] = []
        for plan, (pos, bounces) in zip(self.plans, self.tracks):
            o = plan.obj
            all_bounces += bounces
            changes = {e.t: e for e in plan.motion_events + bounces}
            colour_changes = {e.t: e.colour for e in plan.colour_events}
            colour, motion = o.colours[0], plan.direction or "still"
            for t in range(self.T):
                if t in colour_changes:
                    colour = colour_changes[t]
                if t in changes:
                    e = changes[t]
                    motion = "still" if e.type == "stop" else e.direction
                states[t].append(ObjectState(
                    x=round(float(pos[t, 0]), 3), y=round(float(pos[t, 1]), 3), colour=colour,
                    visible=o.first <= t <= o.last, motion=motion,
                ))
        return states, all_bounces
