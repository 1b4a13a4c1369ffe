"""Questions about one video, each with its reference answer and its wrong answers.

Every question type is a builder `(Asker) -> QA | None` (None: the video has nothing to ask of that
type). A QA carries:
- `params`: what the question asks in structured form (object ids, event indices, the expected
  value), stored in each record's `toy` metadata so the oracle never parses questions;
- several paraphrases of the question (consistency benchmark), a reference answer sentence, a terse
  answer (open-ended QA benchmark) and candidates (multiple-choice benchmark);
- `wrongs`: corrupted answers built from the same templates, each with its corruption name and a
  one-sentence reason ("{x}" stands for the answer's letter in a judge example).

Short-answer types: colour, shape, count, direction, colour_change, which_object, event_order,
when, yes_no. Long-answer types: describe, describe_events, describe_object (and clip, built in
dataset.py from describe.span_facts over one clip).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from vlm_rlaif.toyworld.config import ToyWorldConfig
from vlm_rlaif.toyworld.corrupt import corrupt_long, false_event
from vlm_rlaif.toyworld.describe import Fact, Name, Speaker, number_word, part_of, span_facts, with_sizes
from vlm_rlaif.toyworld.lexicon import DIRECTION_PHRASE, DIRECTIONS, GEN_SHAPE_PLURAL, PARTS
from vlm_rlaif.toyworld.world import Truth

PART_PHRASE = {"start": "at the start", "middle": "in the middle", "end": "at the end"}


@dataclass
class Wrong:
    corruption: str
    answer: str
    reason: str  # "{x}" = the letter of this (worse) answer


@dataclass
class QA:
    qtype: str
    kind: str  # "short" | "long"
    params: dict
    questions: list[str]
    answer: str
    short: str
    candidates: list[str] | None = None
    wrongs: list[Wrong] = field(default_factory=list)
    facts: list[Fact] | None = None  # long answers: the facts the answer realises


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


class Asker:
    """Builds questions about one video with one random generator."""

    def __init__(self, truth: Truth, cfg: ToyWorldConfig, rng: np.random.Generator):
        self.truth, self.cfg, self.rng = truth, cfg, rng
        self.shape_count = {s: sum(o.shape == s for o in truth.objects) for s in cfg.shapes}

    def pick(self, options: list):
        return options[int(self.rng.integers(len(options)))]

    def speaker(self) -> Speaker:
        return Speaker(self.rng)

    def ref(self, obj: int, colour: str | None = None, allow_bare: bool = True) -> str:
        """'the red square', or 'the square' when it is the only square."""
        o = self.truth.objects[obj]
        noun = self.pick({"circle": ["circle", "circle", "ball"], "square": ["square", "square", "box"]}.get(
            o.shape, [o.shape]))
        if allow_bare and self.shape_count[o.shape] == 1 and self.rng.random() < 0.4:
            return f"the {noun}"
        return f"the {colour or o.colours[0]} {noun}"

    def event_fact(self, k: int) -> Fact:
        """The event as a Fact (named by the object's colour just before it)."""
        span = self.truth.whole
        return next(f for f in span_facts(self.truth, span) if f.event == k)

    def add_generic_wrongs(self, qa: QA, obj: int | None) -> QA:
        """Wrongs every short question gets: repetition, and a true answer plus a false claim."""
        reps = " ".join([qa.answer] * int(self.rng.integers(2, 4)))
        qa.wrongs.append(Wrong("repetition", reps, "Answer {x} repeats itself."))
        lie = false_event(self.truth, self.truth.whole, self.rng, self.cfg, obj)
        if lie is not None:
            fact, reason = lie
            sp = self.speaker()
            qa.wrongs.append(Wrong("invented_event", f"{qa.answer} {_cap(sp.clause(fact, pronoun_ok=False))}.", reason))
        return qa

    # ------------------------------------------------------------------ short-answer types
    def colour(self) -> QA | None:
        t = self.truth
        options = [o for o in t.objects if self.shape_count[o.shape] == 1]
        if not options:
            return None
        o = self.pick(options)
        noun = self.pick({"circle": ["circle", "ball"], "square": ["square", "box"]}.get(o.shape, [o.shape]))
        n = f"the {noun}"
        if len(o.colours) == 1:
            when, expected = "any", o.colours[0]
            qs = [f"What colour is {n}?", f"What is the colour of {n}?", f"Which colour does {n} have?",
                  f"What colour is {n} in the video?"]
            suffix = ""
        else:
            whens = [w for w, ok in (("start", o.first == 0), ("end", o.last == t.frames - 1)) if ok]
            if not whens:
                return None
            when = self.pick(whens)
            expected = t.colour_at(o.id, o.first if when == "start" else o.last)
            phrase = self.pick({"start": ["at the start", "at first", "at the beginning"],
                                "end": ["at the end", "at the end of the video"]}[when])
            qs = [f"What colour is {n} {phrase}?", f"What is the colour of {n} {phrase}?",
                  f"Which colour does {n} have {phrase}?"]
            suffix = " " + phrase
        self.rng.shuffle(qs)
        templates = ["{C}.", "It is {c}{s}.", f"{_cap(n)} is {{c}}{{s}}.", "{C}{s}."]
        form = self.pick(templates)

        def say(c: str) -> str:
            return form.format(C=c.capitalize(), c=c, s=suffix)

        wrong_colours = [c for c in self.cfg.colours if c not in o.colours]
        qa = QA("colour", "short", {"object": o.id, "when": when, "colour": expected}, qs, say(expected),
                expected, self._candidates(expected, list(self.cfg.colours)))
        for c in self.rng.permutation(wrong_colours)[:2]:
            qa.wrongs.append(Wrong("wrong_colour", say(str(c)),
                                   f"Answer {{x}} says {n} is {c}, but it is {expected}."))
        return self.add_generic_wrongs(qa, o.id)

    def shape(self) -> QA | None:
        t = self.truth
        options = [(o, c) for o in t.objects for c in o.colours
                   if all(c not in p.colours for p in t.objects if p.id != o.id)]
        if not options:
            return None
        o, c = options[int(self.rng.integers(len(options)))]
        generic = self.pick(["object", "shape", "thing"])
        qs = [f"What shape is the {c} {generic}?", f"What is the {c} {generic}?",
              f"What kind of shape is the {c} {generic}?", f"Which shape is {c}?"]
        self.rng.shuffle(qs)
        form = self.pick(["A {s}.", "It is a {s}.", f"The {c} {generic} is a {{s}}.", "It is a {c} {s}."])

        def say(s: str) -> str:
            return form.format(s=s, c=c)

        qa = QA("shape", "short", {"object": o.id, "colour": c, "shape": o.shape}, qs, say(o.shape), o.shape,
                list(self.cfg.shapes))
        for s in self.rng.permutation([s for s in self.cfg.shapes if s != o.shape])[:2]:
            qa.wrongs.append(Wrong("wrong_shape", say(str(s)),
                                   f"Answer {{x}} says the {c} {generic} is a {s}, but it is a {o.shape}."))
        return self.add_generic_wrongs(qa, o.id)

    def count(self) -> QA | None:
        t = self.truth
        if self.rng.random() < 0.5:
            what, n = "objects", len(t.objects)
            noun = self.pick(["objects", "shapes"])
            singular = noun[:-1]
            qs = [f"How many {noun} are there in the video?", f"How many {noun} appear in the video?",
                  f"How many {noun} can you see in the video?", f"How many different {noun} are in the video?"]
        else:
            what = self.pick(list(self.cfg.shapes))
            n = self.shape_count[what]
            noun = GEN_SHAPE_PLURAL[what]
            singular = what
            qs = [f"How many {noun} are there in the video?", f"How many {noun} appear in the video?",
                  f"How many {noun} can you see?"]
        self.rng.shuffle(qs)
        form = int(self.rng.integers(3))

        def say(k: int) -> str:
            word = number_word(k, self.rng)
            if k == 0:
                return ["There are no {p}.", "None.", "Zero."][form].format(p=noun)
            if k == 1:
                return ["There is one {s}.", "One.", "Only one."][form].format(s=singular)
            return ["There are {w} {p}.", "{W}.", "I can see {w} {p}."][form].format(w=word, W=_cap(word), p=noun)

        qa = QA("count", "short", {"what": what, "count": n}, qs, say(n), number_word(n, self.rng, 0.0),
                self._candidates(number_word(n, self.rng, 0.0), ["zero", "one", "two", "three", "four"]
                                 if what != "objects" else ["one", "two", "three", "four"]))
        for k in (n + 1, n - 1):
            if k >= 0:
                qa.wrongs.append(Wrong("wrong_count", say(k), f"Answer {{x}} says {k}, but the right count is {n}."))
        return self.add_generic_wrongs(qa, None)

    def direction(self) -> QA | None:
        t = self.truth
        o = self.pick(t.objects)
        segments = t.motion_segments(o.id, t.whole)
        dirs = [m for _, _, m in segments if m != "still"]
        n = self.ref(o.id)
        if not dirs:
            when, expected = "only", "still"
            qs = [f"Which way does {n} move?", f"In which direction does {n} move?", f"Where does {n} move?"]
        elif len(set(dirs)) == 1:
            when, expected = "only", dirs[0]
            qs = [f"Which way does {n} move?", f"In which direction does {n} move?",
                  f"Which direction is {n} moving in?", f"Where does {n} move?"]
        else:
            when, expected = "first", dirs[0]
            qs = [f"Which way does {n} move first?", f"In which direction does {n} move first?",
                  f"Where does {n} move first?"]
        self.rng.shuffle(qs)
        sp = self.speaker()
        form = int(self.rng.integers(3))

        def say(d: str) -> str:
            if d == "still":
                return ["It does not move.", "It stays still.", f"{_cap(n)} does not move."][form]
            first = " first" if when == "first" else ""
            phrase = sp.direction(d)
            return [f"{_cap(phrase)}{first}.", f"It moves {phrase}{first}.", f"{_cap(n)} moves {phrase}{first}."][form]

        qa = QA("direction", "short", {"object": o.id, "when": when, "direction": expected}, qs, say(expected),
                expected, ["left", "right", "up", "down", "still"])
        truth_says = "does not move" if expected == "still" else f"moves {DIRECTION_PHRASE[expected]}"
        for d in self.rng.permutation([d for d in DIRECTIONS if d not in dirs])[:2]:
            qa.wrongs.append(Wrong("wrong_direction", say(str(d)),
                                   f"Answer {{x}} says {n} moves {DIRECTION_PHRASE[str(d)]}, but it {truth_says}."))
        if dirs and "still" not in [m for _, _, m in segments]:
            qa.wrongs.append(Wrong("wrong_direction", say("still"),
                                   f"Answer {{x}} says {n} does not move, but it {truth_says}."))
        return self.add_generic_wrongs(qa, o.id)

    def colour_change(self) -> QA | None:
        t = self.truth
        changes = [k for k, e in enumerate(t.events) if e.type == "change_colour"]
        if not changes:
            return None
        k = self.pick(changes)
        e = t.events[k]
        if k != next(j for j in changes if t.events[j].object == e.object):
            k = next(j for j in changes if t.events[j].object == e.object)  # ask about its first change
            e = t.events[k]
        o = t.objects[e.object]
        n = self.ref(o.id, e.from_colour)
        first = " first" if len(o.colours) > 1 and sum(t.events[j].object == o.id for j in changes) > 1 else ""
        qs = [f"What colour does {n} turn{first}?", f"What colour does {n} change to{first}?",
              f"Which colour does {n} become{first}?"]
        self.rng.shuffle(qs)
        form = self.pick(["{C}.", "It turns {c}.", f"{_cap(n)} turns {{c}}.", "It becomes {c}."])

        def say(c: str) -> str:
            return form.format(C=c.capitalize(), c=c)

        qa = QA("colour_change", "short", {"object": o.id, "event": k, "colour": e.colour}, qs, say(e.colour),
                e.colour, self._candidates(e.colour, [c for c in self.cfg.colours if c != e.from_colour]))
        for c in self.rng.permutation([c for c in self.cfg.colours if c not in o.colours])[:2]:
            qa.wrongs.append(Wrong("wrong_colour", say(str(c)),
                                   f"Answer {{x}} says {n} turns {c}, but it turns {e.colour}."))
        return self.add_generic_wrongs(qa, o.id)

    def which_object(self) -> QA | None:
        t = self.truth

        def signature(e) -> tuple:
            return (e.type, e.colour if e.type == "change_colour" else None, e.wall if e.type == "bounce" else None)

        sigs = [signature(e) for e in t.events]
        options = [k for k, s in enumerate(sigs) if sigs.count(s) == 1]
        if not options:
            return None
        k = self.pick(options)
        e = t.events[k]
        generic = self.pick(["object", "shape"])
        qs = {
            "appear": [f"Which {generic} appears during the video?", f"Which {generic} shows up later in the video?"],
            "disappear": [f"Which {generic} disappears?", f"Which {generic} vanishes?",
                          f"Which {generic} goes away during the video?"],
            "change_colour": [f"Which {generic} turns {e.colour}?", f"Which {generic} changes to {e.colour}?",
                              f"Which {generic} becomes {e.colour}?"],
            "stop": [f"Which {generic} stops?", f"Which {generic} stops moving?"],
            "start": [f"Which {generic} starts moving?", f"Which {generic} begins to move?"],
            "bounce": [f"Which {generic} bounces off the {e.wall} wall?", f"Which {generic} hits the {e.wall} wall?"],
        }[e.type]
        self.rng.shuffle(qs)
        fact = self.event_fact(k)
        form = int(self.rng.integers(3))
        sp = self.speaker()

        def say(name: Name) -> str:
            sp.mentioned.add((name.colour, name.shape))
            noun_phrase = sp.np(name, definite=True)
            return [f"{_cap(noun_phrase)}.", f"It is {noun_phrase}.",
                    f"{_cap(noun_phrase)} {sp.event_vp(fact)}."][form]

        right = say(fact.name)
        qa = QA("which_object", "short", {"event": k, "object": e.object}, qs, right,
                f"{fact.name.colour} {fact.name.shape}", None)
        names = [f"{o.colours[0]} {o.shape}" for o in t.objects if o.id != e.object]
        for o in t.objects:
            if o.id != e.object:
                other = Name(o.colours[0], o.shape)
                qa.wrongs.append(Wrong("wrong_object", say(other),
                                       f"Answer {{x}} names the {other.colour} {other.shape}, but it is the "
                                       f"{fact.name.colour} {fact.name.shape}."))
        fakes = self._fake_names(3)
        qa.candidates = self._candidates(qa.short, names + [f"{c} {s}" for c, s in fakes])
        return self.add_generic_wrongs(qa, e.object)

    def event_order(self) -> QA | None:
        t = self.truth
        facts = [f for f in span_facts(t, t.whole) if f.event is not None]
        pairs = [(a, b) for i, a in enumerate(facts) for b in facts[i + 1:]
                 if b.t - a.t >= self.cfg.order_gap and _phrase_key(a) != _phrase_key(b)]
        if not pairs:
            return None
        a, b = pairs[int(self.rng.integers(len(pairs)))]
        sp = self.speaker()
        for f in (a, b):
            sp.mentioned.add((f.name.colour, f.name.shape))
        # Definite names ("the green triangle appears"): the question is about things in the video.
        ca, cb = _plain_clause(sp, a), _plain_clause(sp, b)
        ask = self.pick(["first", "last", "before_after"])
        if ask == "before_after":
            # Ask about the earlier or the later event with equal odds, so "before" is no safe guess.
            (x, cx), (y, cy) = ((a, ca), (b, cb)) if self.rng.random() < 0.5 else ((b, cb), (a, ca))
            right = "before" if x.t < y.t else "after"
            wrong = "after" if right == "before" else "before"
            subject = sp.np(x.name, definite=True)
            qs = [f"Does {subject} {_base_vp(x)} before or after {cy}?",
                  f"Does {subject} {_base_vp(x)} before or after the moment {cy}?"]
            form = int(self.rng.integers(3))

            def say(rel: str) -> str:
                return [f"{_cap(rel)}.", f"{_cap(cx)} {rel} {cy}.", f"It happens {rel}."][form]

            qa = QA("event_order", "short", {"events": [x.event, y.event], "ask": ask, "answer": right},
                    qs, say(right), right, ["before", "after"])
            qa.wrongs.append(Wrong("wrong_order", say(wrong),
                                   f"Answer {{x}} gets the order wrong: {ca} before {cb}."))
            return self.add_generic_wrongs(qa, None)
        options = [ca, cb] if self.rng.random() < 0.5 else [cb, ca]
        word = {"first": ["first", "earlier"], "last": ["later", "last", "second"]}[ask]
        w = self.pick(word)
        qs = [f"Which happens {w}: {options[0]} or {options[1]}?", f"What happens {w}, {options[0]} or {options[1]}?",
              f"Which comes {'first' if ask == 'first' else 'second'}: {options[0]} or {options[1]}?"]
        self.rng.shuffle(qs)
        right, other = (ca, cb) if ask == "first" else (cb, ca)
        form = int(self.rng.integers(3))

        def say(pick: str, rest: str) -> str:
            if ask == "first":
                return [f"{_cap(pick)} first.", f"{_cap(pick)}.", f"{_cap(pick)} before {rest}."][form]
            return [f"{_cap(pick)} later.", f"{_cap(pick)}.", f"{_cap(pick)} after {rest}."][form]

        answer_event = a.event if ask == "first" else b.event
        qa = QA("event_order", "short", {"events": [a.event, b.event], "ask": ask, "answer": answer_event},
                qs, say(right, other), right, options)
        qa.wrongs.append(Wrong("wrong_order", say(other, right),
                               f"Answer {{x}} gets the order wrong: {ca} before {cb}."))
        return self.add_generic_wrongs(qa, None)

    def when(self) -> QA | None:
        t = self.truth
        span = t.whole
        facts = [f for f in span_facts(t, span) if f.event is not None
                 and part_of(max(f.t - 1, 0), span) == part_of(f.t, span) == part_of(min(f.t + 1, span[1]), span)]
        if not facts:
            return None
        f = self.pick(facts)
        sp = self.speaker()
        sp.mentioned.add((f.name.colour, f.name.shape))
        subject = sp.np(f.name, definite=True)
        base = _base_vp(f)
        qs = [f"When does {subject} {base}: at the start, in the middle or at the end of the video?",
              f"At what point does {subject} {base}: at the start, in the middle or at the end?",
              f"Does {subject} {base} at the start, in the middle or at the end of the video?"]
        self.rng.shuffle(qs)
        part = part_of(f.t, span)
        form = int(self.rng.integers(3))

        def say(p: str) -> str:
            phrase = self.pick({"start": ["at the start", "at the beginning"], "middle": ["in the middle"],
                                "end": ["at the end", "near the end"]}[p])
            return [f"{_cap(phrase)}.", f"It happens {phrase} of the video.", f"{_cap(phrase)} of the video."][form]

        qa = QA("when", "short", {"event": f.event, "part": part}, qs, say(part), PART_PHRASE[part],
                [PART_PHRASE[p] for p in PARTS])
        for p in PARTS:
            if p != part:
                qa.wrongs.append(Wrong("wrong_time", say(p),
                                       f"Answer {{x}} says it happens {PART_PHRASE[p]}, but it happens {PART_PHRASE[part]}."))
        return self.add_generic_wrongs(qa, f.obj)

    def yes_no(self) -> QA | None:
        t = self.truth
        want_yes = self.rng.random() < 0.5
        options = _yes_no_facts(t, self.cfg, want_yes)
        if not options:
            return None
        fact = self.pick(options)
        kind = fact["kind"]
        sp = self.speaker()
        if kind == "exists":
            n = f"a {fact['colour']} {sp.noun(fact['shape'])}"
            qs = [f"Is there {n} in the video?", f"Does the video show {n}?", f"Can you see {n} in the video?"]
            yes_forms = ["Yes.", "Yes, there is.", f"Yes, there is {n}."]
            no_forms = ["No.", "No, there is not.", f"No, there is no {fact['colour']} {sp.noun(fact['shape'])}."]
            true_says = f"there is {n}" if want_yes else f"there is no {fact['colour']} {fact['shape']}"
        else:
            o = fact["object"]
            n = self.ref(o, fact.get("name_colour"))
            vp, neg = _yes_no_phrases(fact)
            qs = [f"Does {n} {vp}?", f"Does {n} {vp} at some point?", f"Does {n} {vp} in the video?"]
            yes_forms = ["Yes.", "Yes, it does.", f"Yes, {n} does."]
            no_forms = ["No.", "No, it does not.", f"No, {n} {neg}."]
            true_says = f"{n} {_third_person(vp)}" if want_yes else f"{n} {neg}"
        self.rng.shuffle(qs)
        form = int(self.rng.integers(3))
        answer = (yes_forms if want_yes else no_forms)[form]
        flipped = (no_forms if want_yes else yes_forms)[form]
        said = "no" if want_yes else "yes"
        params = {"fact": fact, "answer": "yes" if want_yes else "no"}
        qa = QA("yes_no", "short", params, qs, answer, params["answer"], ["yes", "no"])
        qa.wrongs.append(Wrong("flipped_yes_no", flipped, f"Answer {{x}} says {said}, but {true_says}."))
        return self.add_generic_wrongs(qa, fact.get("object"))

    # ------------------------------------------------------------------ long-answer types
    def _long(self, qtype: str, params: dict, qs: list[str], facts: list[Fact], style: str,
              span: tuple[int, int], count: int | None = None) -> QA:
        self.rng.shuffle(qs)
        answer = self.speaker().describe(facts, span, style=style, order_gap=self.cfg.order_gap, count=count)
        qa = QA(qtype, "long", params, qs, answer, answer, None, facts=facts)
        for corruption in ("wrong_colour", "wrong_shape", "wrong_direction", "wrong_order", "invented_object",
                           "invented_event", "omission", "repetition"):
            bad = corrupt_long(self.truth, facts, span, self.rng, self.cfg, corruption, style=style, count=count)
            if bad is not None:
                qa.wrongs.append(Wrong(corruption, *bad))
        return qa

    def describe(self) -> QA:
        t = self.truth
        span = t.whole
        facts = with_sizes(t, span_facts(t, span), self.rng, 0.3)
        count = len(t.objects) if all(o.first == 0 for o in t.objects) else None
        qs = ["Describe the video in detail.", "What happens in the video?", "Describe what you see in this video.",
              "Tell me what happens in this video.", "Give a detailed description of the video."]
        return self._long("describe", {}, qs, facts, "video", span, count)

    def describe_events(self) -> QA | None:
        t = self.truth
        span = t.whole
        facts = [f for f in span_facts(t, span) if f.event is not None]
        if len(facts) < 2:
            return None
        qs = ["Describe the events of the video in order.", "In what order do things happen in the video?",
              "What happens in the video, from start to end?", "List the events of the video in the order they happen."]
        return self._long("describe_events", {}, qs, facts, "events", span)

    def describe_object(self) -> QA | None:
        t = self.truth
        span = t.whole
        options = [o for o in t.objects if any(e.object == o.id for e in t.events)]
        if not options:
            return None
        o = self.pick(options)
        n = self.ref(o.id, allow_bare=False)
        qs = [f"What does {n} do in the video?", f"Describe what happens to {n}.",
              f"Describe how {n} moves and changes."]
        return self._long("describe_object", {"object": o.id}, qs, span_facts(t, span, o.id), "object", span)

    # ------------------------------------------------------------------ helpers
    def _candidates(self, answer: str, pool: list[str], k: int = 4) -> list[str]:
        others = [p for p in dict.fromkeys(pool) if p != answer]
        chosen = [str(x) for x in self.rng.permutation(others)[: k - 1]] + [answer]
        return [chosen[i] for i in self.rng.permutation(len(chosen))]

    def _fake_names(self, k: int) -> list[tuple[str, str]]:
        t = self.truth
        fakes = [(c, s) for s in self.cfg.shapes for c in self.cfg.colours
                 if not any(o.shape == s and c in o.colours for o in t.objects)]
        return [fakes[i] for i in self.rng.permutation(len(fakes))[:k]]


def _phrase_key(f: Fact) -> tuple:
    return (f.obj, f.kind, f.value)


def _plain_clause(sp: Speaker, f: Fact) -> str:
    """'the red square turns blue': a definite, pronoun-free event clause without the trailing
    motion (questions and reasons name one event)."""
    bare = Fact(f.kind, f.obj, f.t, f.name, value=f.value, event=f.event)
    return f"{sp.np(f.name, definite=True)} {sp.event_vp(bare)}"


def _base_vp(f: Fact) -> str:
    return {
        "appear": "appear",
        "disappear": "disappear",
        "change_colour": f"turn {f.value}",
        "stop": "stop",
        "start": f"start moving {DIRECTION_PHRASE.get(f.value or '', '')}".strip(),
        "bounce": f"bounce off the {f.value} wall",
    }[f.kind]


def _third_person(vp: str) -> str:
    head, _, rest = vp.partition(" ")
    head = {"do": "does", "go": "goes", "bounce": "bounces", "change": "changes"}.get(head, head + "s")
    return f"{head} {rest}".strip()


def _yes_no_phrases(fact: dict) -> tuple[str, str]:
    """(base verb phrase for the question, negated third-person phrase)."""
    kind = fact["kind"]
    if kind == "move":
        d = fact.get("direction")
        if d is None:
            return "move", "does not move"
        return f"move {DIRECTION_PHRASE[d]}", f"does not move {DIRECTION_PHRASE[d]}"
    if kind == "change_colour":
        c = fact.get("colour")
        return (f"turn {c}", f"does not turn {c}") if c else ("change colour", "does not change colour")
    return {
        "disappear": ("disappear", "does not disappear"),
        "stop": ("stop", "does not stop"),
        "start": ("start moving", "does not start moving"),
        "bounce": ("bounce off a wall", "does not bounce off a wall"),
    }[kind]


def _yes_no_facts(t: Truth, cfg: ToyWorldConfig, want_yes: bool) -> list[dict]:
    """Candidate facts for a yes/no question whose true answer is want_yes."""
    out: list[dict] = []
    if want_yes:
        for o in t.objects:
            out.append({"kind": "exists", "colour": o.colours[0], "shape": o.shape})
    else:
        for s in cfg.shapes:
            for c in cfg.colours:
                if not any(o.shape == s and c in o.colours for o in t.objects):
                    # Prefer near misses: a present shape or a present colour.
                    if any(o.shape == s or c in o.colours for o in t.objects):
                        out.append({"kind": "exists", "colour": c, "shape": s})
    for o in t.objects:
        own = [e for e in t.events if e.object == o.id]
        types = {e.type for e in own}
        dirs = {m for _, _, m in t.motion_segments(o.id, t.whole)}
        base = {"object": o.id}
        for kind in ("disappear", "stop", "start", "bounce"):
            if (kind in types) == want_yes:
                out.append(base | {"kind": kind})
        changes = [e for e in own if e.type == "change_colour"]
        if bool(changes) == want_yes:
            out.append(base | {"kind": "change_colour", "colour": None})
        if want_yes:
            for e in changes:
                out.append(base | {"kind": "change_colour", "colour": e.colour, "name_colour": e.from_colour})
            for d in sorted(dirs - {"still"}):  # sorted: set order depends on the hash seed
                out.append(base | {"kind": "move", "direction": d})
            if dirs - {"still"}:
                out.append(base | {"kind": "move", "direction": None})
        else:
            for c in cfg.colours:
                if c not in o.colours:
                    out.append(base | {"kind": "change_colour", "colour": c})
            for d in DIRECTIONS:
                if d not in dirs:
                    out.append(base | {"kind": "move", "direction": d})
            if dirs == {"still"}:
                out.append(base | {"kind": "move", "direction": None})
    # Rarer kinds first would bias; shuffle happens in the caller's pick.
    return out


SHORT_QTYPES: dict[str, Callable[[Asker], QA | None]] = {
    "colour": Asker.colour,
    "shape": Asker.shape,
    "count": Asker.count,
    "direction": Asker.direction,
    "colour_change": Asker.colour_change,
    "which_object": Asker.which_object,
    "event_order": Asker.event_order,
    "when": Asker.when,
    "yes_no": Asker.yes_no,
}
LONG_QTYPES: dict[str, Callable[[Asker], QA | None]] = {
    "describe": Asker.describe,
    "describe_events": Asker.describe_events,
    "describe_object": Asker.describe_object,
}
TEMPORAL_QTYPES = ("event_order", "when", "describe_events")
