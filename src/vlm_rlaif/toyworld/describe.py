"""Describing ground truth in English: the facts of a span of frames, and a small grammar that
turns them into varied sentences (long answers, per-clip descriptions, event phrases).

A description is built in two steps so corruptions can lie precisely: `span_facts` lists what is
true (who is there, how each moves, what happens when), `Speaker.describe` realises a fact list.
A corruption edits the fact list (wrong colour, swapped order, invented event, ...) and realises it
with the same grammar, so a wrong answer reads exactly like a right one.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from vlm_rlaif.toyworld.lexicon import GEN_DIRECTION, GEN_SHAPE_NOUN, GEN_WALL, NUMBER_WORDS
from vlm_rlaif.toyworld.world import Truth


@dataclass(frozen=True)
class Name:
    """How a text calls an object: its colour at that moment and its shape (size only if said)."""

    colour: str
    shape: str
    size: str | None = None


@dataclass(frozen=True)
class Fact:
    """One describable fact. kind: exists | motion | appear | disappear | change_colour | stop |
    start | bounce. obj < 0 marks an invented object (corruptions only)."""

    kind: str
    obj: int
    t: int
    name: Name
    value: str | None = None  # motion: direction | still; change_colour: colour; start: direction; bounce: wall
    then: str | None = None  # appear, bounce: the motion right after
    event: int | None = None  # index into truth.events


def part_of(t: int, span: tuple[int, int]) -> str:
    """Which third of the span frame t is in: start | middle | end."""
    length = span[1] - span[0] + 1
    return ("start", "middle", "end")[min(2, 3 * (t - span[0]) // length)]


def name_at(truth: Truth, obj: int, t: int) -> Name:
    o = truth.objects[obj]
    return Name(truth.colour_at(obj, t), o.shape)


def span_facts(truth: Truth, span: tuple[int, int], obj: int | None = None) -> list[Fact]:
    """What is true in frames span[0]..span[1] (of one object if obj is given), in temporal order:
    objects present at the span's start with their motion, then every event."""
    facts: list[Fact] = []
    ids = [i for i in truth.objects_in(span) if obj is None or i == obj]
    for i in ids:
        if truth.objects[i].first <= span[0]:
            facts.append(Fact("exists", i, span[0], name_at(truth, i, span[0])))
    for i in ids:
        if truth.objects[i].first <= span[0]:
            motion = truth.states[span[0]][i].motion
            facts.append(Fact("motion", i, span[0], name_at(truth, i, span[0]), value=motion))
    for k in truth.events_in(span):
        e = truth.events[k]
        if e.object not in ids:
            continue
        before = max(e.t - 1, truth.objects[e.object].first)
        if e.type == "appear":
            facts.append(Fact("appear", e.object, e.t, name_at(truth, e.object, e.t),
                              then=truth.states[e.t][e.object].motion, event=k))
        elif e.type == "change_colour":
            facts.append(Fact("change_colour", e.object, e.t, name_at(truth, e.object, before),
                              value=e.colour, event=k))
        elif e.type == "start":
            facts.append(Fact("start", e.object, e.t, name_at(truth, e.object, before), value=e.direction, event=k))
        elif e.type == "bounce":
            facts.append(Fact("bounce", e.object, e.t, name_at(truth, e.object, before), value=e.wall,
                              then=e.direction, event=k))
        else:  # disappear, stop
            facts.append(Fact(e.type, e.object, e.t, name_at(truth, e.object, before), event=k))
    return facts


def with_sizes(truth: Truth, facts: list[Fact], rng: np.random.Generator, prob: float) -> list[Fact]:
    """Name some objects with their size ("a big red square") where they are introduced."""
    out = []
    for f in facts:
        if f.kind in ("exists", "appear") and f.obj >= 0 and rng.random() < prob:
            f = replace(f, name=replace(f.name, size=truth.objects[f.obj].size))
        out.append(f)
    return out


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def number_word(n: int, rng: np.random.Generator, digit_prob: float = 0.25) -> str:
    if n < len(NUMBER_WORDS) and rng.random() >= digit_prob:
        return NUMBER_WORDS[n]
    return str(n)


class Speaker:
    """Realises facts as sentences. One Speaker per text: it remembers which objects were already
    mentioned ("a" then "the") and which synonym each shape got, so one text stays consistent."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        self.mentioned: set[tuple[str, str]] = set()
        self.shape_word: dict[str, str] = {}
        self.last_subject: Name | None = None

    def pick(self, options: list[str]) -> str:
        return options[int(self.rng.integers(len(options)))]

    # -------------------------------------------------------------- words
    def noun(self, shape: str) -> str:
        if shape not in self.shape_word:
            self.shape_word[shape] = self.pick(GEN_SHAPE_NOUN[shape])
        return self.shape_word[shape]

    def direction(self, d: str) -> str:
        return self.pick(GEN_DIRECTION[d])

    def np(self, name: Name, definite: bool | None = None, pronoun_ok: bool = False) -> str:
        """A noun phrase for the object: 'a big red square', 'the red box', or 'it'."""
        key = (name.colour, name.shape)
        if pronoun_ok and self.last_subject == name and self.rng.random() < 0.5:
            return "it"
        if definite is None:
            definite = key in self.mentioned
        self.mentioned.add(key)
        size = f"{name.size} " if name.size else ""
        return f"{'the' if definite else 'a'} {size}{name.colour} {self.noun(name.shape)}"

    # -------------------------------------------------------------- verb phrases (subject left out)
    def motion_vp(self, motion: str, continuous: bool = False) -> str:
        if motion == "still":
            if continuous:
                return self.pick(["standing still", "not moving", "staying in place"])
            return self.pick(["stays still", "does not move", "is not moving", "stays in place"])
        d = self.direction(motion)
        if continuous:
            return self.pick(["moving", "moving", "sliding"]) + " " + d
        return self.pick(["moves", "moves", "is moving", "slides", "goes", "travels"]) + " " + d

    def event_vp(self, f: Fact, negated: bool = False) -> str:
        """'turns blue', 'bounces off the right wall and moves left', ... (or its negation)."""
        if negated:
            return {
                "appear": "does not appear",
                "disappear": "does not disappear",
                "change_colour": f"does not turn {f.value}" if f.value else "does not change colour",
                "stop": "does not stop",
                "start": "does not start moving",
                "bounce": "does not bounce off a wall",
                "motion": "does not move " + self.direction(f.value) if f.value != "still" else "moves",
            }[f.kind]
        if f.kind == "appear":
            vp = self.pick(["appears", "appears", "shows up", "comes into view"])
            if f.then is not None:
                vp += " and " + self.motion_vp(f.then)
            return vp
        if f.kind == "disappear":
            return self.pick(["disappears", "disappears", "vanishes", "goes away"])
        if f.kind == "change_colour":
            return self.pick([f"turns {f.value}", f"turns {f.value}", f"becomes {f.value}",
                              f"changes to {f.value}", f"changes colour to {f.value}"])
        if f.kind == "stop":
            return self.pick(["stops", "stops moving", "comes to a stop"])
        if f.kind == "start":
            return self.pick(["starts moving", "starts to move", "begins to move"]) + " " + self.direction(f.value)
        if f.kind == "bounce":
            wall = GEN_WALL[f.value]
            hit = self.pick([f"bounces off the {wall} wall", f"bounces off the {wall} wall",
                             f"bounces off the {wall} edge"])
            if f.then is not None:
                hit += self.pick([" and moves ", " and goes ", " and comes back "]) + self.direction(f.then)
            return hit
        if f.kind == "motion":
            return self.motion_vp(f.value)
        raise ValueError(f"no verb phrase for fact kind {f.kind!r}")

    def clause(self, f: Fact, pronoun_ok: bool = True) -> str:
        definite = None if f.kind == "appear" else True
        subject = self.np(f.name, definite=definite, pronoun_ok=pronoun_ok and f.kind != "appear")
        self.last_subject = f.name
        return f"{subject} {self.event_vp(f)}"

    # -------------------------------------------------------------- whole descriptions
    def intro(self, exists: list[Fact], motions: dict[int, Fact], count: int | None) -> list[str]:
        """Sentences introducing the objects present at the start, with their motion."""
        if not exists:
            return []
        order = [exists[i] for i in self.rng.permutation(len(exists))]
        if len(order) == 1 and self.rng.random() < 0.5 and order[0].obj in motions:
            f = order[0]
            m = motions.pop(f.obj)
            lead = self.pick(["There is", "I can see", "The video shows"])
            self.last_subject = f.name
            return [_cap(f"{lead} {self.np(f.name, definite=False)} {self.motion_vp(m.value, continuous=True)}.")]
        listed = [self.np(f.name, definite=False) for f in order]
        joined = listed[0] if len(listed) == 1 else ", ".join(listed[:-1]) + " and " + listed[-1]
        if count is not None and len(listed) > 1 and self.rng.random() < 0.4:
            noun = self.pick(["objects", "shapes"])
            return [_cap(f"there are {number_word(count, self.rng)} {noun}: {joined}.")]
        template = self.pick(["there is {x}.", "the video shows {x}.", "I can see {x}.", "{x} are on a dark background."])
        if len(listed) == 1 and template.startswith("{x}"):
            template = "{x} is on a dark background."
        return [_cap(template.format(x=joined))]

    def motion_sentences(self, motions: list[Fact]) -> list[str]:
        order = [motions[i] for i in self.rng.permutation(len(motions))]
        out: list[str] = []
        while order:
            f = order.pop(0)
            text = f"{self.np(f.name)} {self.motion_vp(f.value)}"
            if order and self.rng.random() < 0.4:
                g = order.pop(0)
                joiner = self.pick([" and ", ", while ", " and "])
                text += f"{joiner}{self.np(g.name)} {self.motion_vp(g.value)}"
                self.last_subject = None
            else:
                self.last_subject = f.name
            out.append(_cap(text) + ".")
        return out

    def event_sentences(self, events: list[Fact], span: tuple[int, int], time_tags: bool,
                        first_marker: bool, order_gap: int) -> list[str]:
        out: list[str] = []
        i = 0
        while i < len(events):
            f = events[i]
            nxt = events[i + 1] if i + 1 < len(events) else None
            # Two events in one sentence, told backwards: "X after Y" (no time word: it would
            # cover both events).
            if nxt is not None and nxt.t - f.t >= order_gap and nxt.kind != "appear" and self.rng.random() < 0.15:
                # Every sentence after the first opens with a sequence word, so the text orders
                # its events explicitly (the oracle orders only such sentences across objects).
                lead = self.pick(["Then ", "After that, ", "Later, "]) if out else ""
                later = self.clause(nxt, pronoun_ok=False)
                earlier = self.clause(f, pronoun_ok=False)
                out.append(_cap(f"{lead}{later} after {earlier}."))
                self.last_subject = None
                i += 2
                continue
            lead = ""
            if time_tags and self.rng.random() < 0.3:
                lead = {"start": self.pick(["At the start, ", "At the beginning, "]),
                        "middle": self.pick(["In the middle, ", "In the middle of the video, "]),
                        "end": self.pick(["At the end, ", "Near the end, "])}[part_of(f.t, span)]
            elif i == 0 and first_marker:
                lead = "First, "
            elif i == len(events) - 1 and len(events) > 1 and self.rng.random() < 0.5:
                lead = "Finally, "
            elif out or i > 0:
                lead = self.pick(["Then ", "After that, ", "Next, ", "Then ", "Later, "])
            if nxt is not None and nxt.t == f.t and self.rng.random() < 0.5:
                first = self.clause(f)
                second = self.clause(nxt, pronoun_ok=False)
                out.append(_cap(f"{lead}{first}, and at the same time {second}."))
                self.last_subject = None
                i += 2
                continue
            out.append(_cap(lead + self.clause(f)) + ".")
            i += 1
        return out

    def describe(self, facts: list[Fact], span: tuple[int, int], *, style: str = "video",
                 order_gap: int = 3, count: int | None = None) -> str:
        """Realise a fact list. style: video (intro, motions, events; time words), clip (the same
        without time words: a clip is short), events (events only, "First, ... Then ..."),
        object (one object's story)."""
        exists = [f for f in facts if f.kind == "exists"]
        motions = {f.obj: f for f in facts if f.kind == "motion"}
        events = [f for f in facts if f.kind not in ("exists", "motion")]
        sentences: list[str] = []
        if style in ("video", "clip"):
            sentences += self.intro(exists, motions, count)
            sentences += self.motion_sentences(list(motions.values()))
        elif style == "object":
            sentences += self.motion_sentences(list(motions.values()))
        sentences += self.event_sentences(events, span, time_tags=style in ("video", "events"),
                                          first_marker=style == "events", order_gap=order_gap)
        if not sentences:
            return "Nothing happens."
        return " ".join(sentences)
