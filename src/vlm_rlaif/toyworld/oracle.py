"""The oracle: checks a free-text answer about a toy video against the video's ground truth.

It only MEASURES (judge accuracy with and without context, reward-model accuracy, hallucinations,
whether RLAIF beat SFT); nothing on the RLAIF training path ever reads it.

    oracle = Oracle()
    verdict = oracle.check(truth, record_toy_meta, "The red square moves left, then it turns blue.")
    verdict.correct, verdict.hallucinations, [f.status for f in verdict.facts]
    oracle.compare(truth, toy_meta, answer_1, answer_2)  # 1, 2, or 0 for a tie

How an answer is judged (parse.py reads the text into mentions and claims):
- every claim about an object is checked against the truth over the question's span (the whole
  video, or one clip for clip descriptions), inside the time window of its time word ("at the end"
  = the last third, +-1 frame). A mentioned object that does not exist, a claim the truth
  contradicts, and two events told in the wrong order each count as one hallucination (a
  contradicted fact). Order is checked only for events >= order_gap frames apart, and only where
  the answer orders them: events of one object, events in one sentence, or the later-told one in a
  sentence opened by a sequence or time word ("Then ...", "Later, ...", "At the end, ...");
- short answers (colour, shape, count, direction, colour_change, which_object, event_order, when,
  yes_no): correct = the value the answer gives is the expected one, no hallucination, no
  repetition;
- descriptions (describe, describe_object, describe_events, clip): correct = no hallucination, no
  repetition, and full coverage: every object in scope is mentioned, every event in scope is told,
  and each object's motion when it is first seen (a direction, or "still"; "starts moving" covers
  "still") is stated. describe_events needs the events only, describe_object that object's.
  `coverage` is the share of those required facts the answer states.
- repetition = the same sentence, saying the same about the same objects, twice.
compare() ranks by (correct, fewer hallucinations, no repetition, coverage); equal ranks tie.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from vlm_rlaif.errors import RecordError
from vlm_rlaif.toyworld.lexicon import WALL_OF
from vlm_rlaif.toyworld.parse import EVENT_KINDS, Claim, Mention, Parsed, parse
from vlm_rlaif.toyworld.world import Truth

Status = Literal["supported", "contradicted", "not_mentioned"]
LONG_QTYPES = ("describe", "describe_events", "describe_object", "clip")
SHORT_QTYPES = ("colour", "shape", "count", "direction", "colour_change", "which_object", "event_order",
                "when", "yes_no")


@dataclass
class FactVerdict:
    fact: str
    status: Status


@dataclass
class Verdict:
    correct: bool
    facts: list[FactVerdict]
    hallucinations: int
    coverage: float = 1.0  # share of required truth facts stated (descriptions); 1/0 for short answers
    repetition: bool = False
    value: object = None  # what a short answer says (its colour, count, ...); None for descriptions
    expected: object = None

    def to_dict(self) -> dict:
        return {"correct": self.correct, "hallucinations": self.hallucinations, "coverage": self.coverage,
                "repetition": self.repetition, "value": self.value, "expected": self.expected,
                "facts": [{"fact": f.fact, "status": f.status} for f in self.facts]}


@dataclass
class _Context:
    truth: Truth
    span: tuple[int, int]
    default: list[int]  # objects a subject-less claim is about ("It is red.")
    facts: list[FactVerdict] = field(default_factory=list)
    matched: dict[int, Claim] = field(default_factory=dict)  # truth event index -> the claim telling it
    told_motion: set[int] = field(default_factory=set)  # objects whose first motion is stated
    named: set[int] = field(default_factory=set)  # objects mentioned unambiguously
    hallucinated_mentions: set[tuple] = field(default_factory=set)


class Oracle:
    def __init__(self, order_gap: int = 3, time_tolerance: int = 2):
        self.order_gap = order_gap
        self.time_tolerance = time_tolerance
        self._truths: dict[Path, Truth] = {}

    # ------------------------------------------------------------------ public API
    def check(self, truth: Truth, toy_meta: dict, answer: str) -> Verdict:
        qtype, params = toy_meta["qtype"], toy_meta.get("params", {})
        if qtype not in LONG_QTYPES + SHORT_QTYPES:
            raise ValueError(f"oracle cannot check question type {qtype!r}")
        span = truth.span_of_clip(params["clip"]) if qtype == "clip" else truth.whole
        ctx = _Context(truth, span, self._default_objects(truth, qtype, params))
        parsed = parse(answer)
        self._check_claims(ctx, parsed)
        self._check_order(ctx)
        repetition = self._repetition(ctx, parsed)
        hallucinations = sum(f.status == "contradicted" for f in ctx.facts)
        if qtype in LONG_QTYPES:
            coverage = self._coverage(ctx, qtype, params)
            correct = hallucinations == 0 and not repetition and coverage == 1.0
            return Verdict(correct, ctx.facts, hallucinations, coverage, repetition)
        value, expected = self._short_value(ctx, parsed, qtype, params)
        right = value is not None and value == expected
        ctx.facts.append(FactVerdict(f"answer: {expected}", "supported" if right else
                                     "not_mentioned" if value is None else "contradicted"))
        correct = right and hallucinations == 0 and not repetition
        return Verdict(correct, ctx.facts, hallucinations + (0 if right or value is None else 1),
                       1.0 if right else 0.0, repetition, value, expected)

    def compare(self, truth: Truth, toy_meta: dict, answer_1: str, answer_2: str) -> int:
        """1 if answer_1 is better, 2 if answer_2 is, 0 for a tie."""
        r1 = self._rank(self.check(truth, toy_meta, answer_1))
        r2 = self._rank(self.check(truth, toy_meta, answer_2))
        return 1 if r1 > r2 else 2 if r2 > r1 else 0

    def load_truth(self, root: str | Path, video_id: str) -> Truth:
        path = Path(root) / "truth" / f"{video_id}.json"
        if path not in self._truths:
            if not path.exists():
                raise RecordError(f"{path}: no ground truth for video {video_id!r} (is {root} a toy world?)")
            self._truths[path] = Truth.from_dict(json.loads(path.read_text()))
        return self._truths[path]

    def check_record(self, root: str | Path, record, answer: str) -> Verdict:
        """Check an answer to a toy-world record (any record type, or its dict) of the world at root."""
        toy = record.get("toy") if isinstance(record, dict) else getattr(record, "toy", None)
        if not toy:
            rid = record.get("id") if isinstance(record, dict) else getattr(record, "id", "?")
            raise RecordError(f"record {rid}: no 'toy' metadata, so the oracle cannot check it")
        return self.check(self.load_truth(root, toy["video_id"]), toy, answer)

    @staticmethod
    def _rank(v: Verdict) -> tuple:
        return (v.correct, -v.hallucinations, not v.repetition, round(v.coverage, 6))

    # ------------------------------------------------------------------ claims
    @staticmethod
    def _default_objects(truth: Truth, qtype: str, params: dict) -> list[int]:
        if "object" in params:
            return [params["object"]]
        if qtype == "yes_no" and "object" in params.get("fact", {}):
            return [params["fact"]["object"]]
        if qtype == "when":
            return [truth.events[params["event"]].object]
        if qtype == "event_order":
            return sorted({truth.events[k].object for k in params["events"]})
        return []

    def resolve(self, ctx: _Context, mention: Mention | None) -> list[int]:
        """Objects in span a mention can mean (the default objects for a missing subject)."""
        if mention is None:
            return list(ctx.default)
        t = ctx.truth
        out = [i for i in t.objects_in(ctx.span)
               if (mention.shape is None or t.objects[i].shape == mention.shape)
               and (mention.colour is None or mention.colour in t.colours_in(i, ctx.span))]
        if mention.size and len(out) > 1:
            sized = [i for i in out if t.objects[i].size == mention.size]
            out = sized or out
        return out

    def _window(self, ctx: _Context, time: str | None) -> tuple[int, int]:
        a, b = ctx.span
        if time is None:
            return a, b
        n = b - a + 1
        k = ("start", "middle", "end").index(time)
        lo, hi = a + (k * n) // 3, a + ((k + 1) * n) // 3 - 1
        return max(a, lo - self.time_tolerance), min(b, hi + self.time_tolerance)

    def _check_claims(self, ctx: _Context, parsed: Parsed) -> None:
        t = ctx.truth
        for claim in parsed.claims:
            if claim.kind == "count":
                self._check_count(ctx, claim)
                continue
            objs = self.resolve(ctx, claim.subject)
            if claim.subject is not None and not objs:
                self._hallucinated_mention(ctx, claim)
                continue
            if not objs:
                continue  # no subject to check against (e.g. "It is red." with no default object)
            if claim.kind == "exists":
                if len(objs) == 1 and not claim.negated:
                    ctx.named.add(objs[0])
                if claim.negated:
                    ctx.facts.append(FactVerdict(f"there is no {claim.subject.text()}", "contradicted"))
                elif claim.time is not None:
                    window = self._window(ctx, claim.time)
                    ok = any(t.visible_frames(i, window) for i in objs)
                    ctx.facts.append(FactVerdict(f"{claim.subject.text()} is there {claim.time}",
                                                 "supported" if ok else "contradicted"))
                continue
            if len(objs) == 1 and claim.subject is not None and not claim.negated:
                ctx.named.add(objs[0])
            window = self._window(ctx, claim.time)
            holds = [self._holds(ctx, i, claim, window) for i in objs]
            ok = any(holds) != claim.negated
            ctx.facts.append(FactVerdict(self._describe_claim(ctx, objs, claim), "supported" if ok else "contradicted"))
            if not ok or claim.negated:
                continue
            if len(objs) == 1 and claim.kind in ("move", "still", "start"):
                first = t.visible_frames(objs[0], ctx.span)[0]
                motion = t.states[first][objs[0]].motion
                if (claim.kind == "move" and claim.value == motion) or (claim.kind == "still" and motion == "still") \
                        or (claim.kind == "start" and motion == "still"):
                    ctx.told_motion.add(objs[0])
            if claim.kind in EVENT_KINDS:
                k = self._match_event(ctx, [i for i, h in zip(objs, holds) if h], claim, window)
                if k is not None and k not in ctx.matched:
                    ctx.matched[k] = claim

    def _hallucinated_mention(self, ctx: _Context, claim: Claim) -> None:
        m = claim.subject
        key = (m.colour, m.shape)
        if claim.kind == "exists" and claim.negated:
            ctx.facts.append(FactVerdict(f"there is no {m.text()}", "supported"))
            return
        if key not in ctx.hallucinated_mentions:
            ctx.hallucinated_mentions.add(key)
            ctx.facts.append(FactVerdict(f"there is a {m.text()}", "contradicted"))

    def _check_count(self, ctx: _Context, claim: Claim) -> None:
        if claim.filter is None:
            return  # a bare number: only the count question knows what it counts
        window = self._window(ctx, claim.time)
        f = claim.filter
        n = sum(1 for i in ctx.truth.objects_in(window)
                if (f.shape is None or ctx.truth.objects[i].shape == f.shape)
                and (f.colour is None or f.colour in ctx.truth.colours_in(i, window)))
        ctx.facts.append(FactVerdict(f"{claim.value} {f.text()}s", "supported" if n == claim.value else "contradicted"))

    def _holds(self, ctx: _Context, obj: int, claim: Claim, window: tuple[int, int]) -> bool:
        t = ctx.truth
        o = t.objects[obj]
        frames = t.visible_frames(obj, window)
        # States hold if true on some visible frame of the window ("the square is red" of a square
        # that turns blue), or on every one for "always" claims ("stays red the whole time").
        some_or_all = all if claim.always else any
        if claim.kind == "colour":
            return some_or_all(t.states[f][obj].colour == claim.value for f in frames)
        if claim.kind == "shape":
            return o.shape == claim.value
        if claim.kind == "size":
            return o.size == claim.value
        motions = [t.states[f][obj].motion for f in frames]
        if claim.kind == "move":
            return some_or_all(m != "still" if claim.value is None else m == claim.value for m in motions)
        if claim.kind == "still":
            return some_or_all(m == "still" for m in motions)
        return self._match_event(ctx, [obj], claim, window, any_match=True) is not None

    def _match_event(self, ctx: _Context, objs: list[int], claim: Claim, window: tuple[int, int],
                     any_match: bool = False) -> int | None:
        """The truth event a claim tells (first not yet matched, else first), or None."""
        kind = "change_colour" if claim.kind == "change_colour" else claim.kind
        hits = []
        for k, e in enumerate(ctx.truth.events):
            if e.object not in objs or e.type != kind or not (window[0] <= e.t <= window[1]):
                continue
            if not (ctx.span[0] <= e.t <= ctx.span[1]):
                continue
            value = {"change_colour": e.colour, "start": e.direction, "bounce": e.wall}.get(kind)
            if claim.value is not None and value is not None and claim.value != value:
                continue
            hits.append(k)
        if not hits:
            return None
        if any_match:
            return hits[0]
        fresh = [k for k in hits if k not in ctx.matched]
        return (fresh or hits)[0]

    def _describe_claim(self, ctx: _Context, objs: list[int], claim: Claim) -> str:
        who = " / ".join(self._name(ctx, i) for i in objs)
        value = f" {claim.value}" if claim.value is not None else ""
        when = f" ({claim.time})" if claim.time else ""
        return f"{who}: {'not ' if claim.negated else ''}{claim.kind}{value}{when}"

    @staticmethod
    def _name(ctx: _Context, obj: int) -> str:
        o = ctx.truth.objects[obj]
        return f"{o.colours[0]} {o.shape}"

    def _check_order(self, ctx: _Context) -> None:
        """Two told events >= order_gap frames apart must be told in their true order when the
        answer orders them: they are events of one object, or told in one sentence, or the one
        told later opens a sentence with a sequence or time word ("Then ...", "At the end, ...")."""
        told = sorted(ctx.matched.items(), key=lambda kv: ctx.truth.events[kv[0]].t)
        for x, (k1, c1) in enumerate(told):
            for k2, c2 in told[x + 1:]:
                e1, e2 = ctx.truth.events[k1], ctx.truth.events[k2]
                ordered = e1.object == e2.object or c1.sentence == c2.sentence or c1.anchored
                if e2.t - e1.t >= self.order_gap and c2.order < c1.order and ordered:
                    ctx.facts.append(FactVerdict(
                        f"order: {self._name(ctx, e1.object)} {e1.type} before {self._name(ctx, e2.object)} "
                        f"{e2.type}", "contradicted"))

    @staticmethod
    def _repetition(ctx: _Context, parsed: Parsed) -> bool:
        seen: dict[tuple, int] = {}
        for index, text in parsed.sentences.items():
            said = tuple(sorted((c.kind, str(c.value), c.negated, id(c.subject) if c.subject else -1)
                                for c in parsed.claims if c.sentence == index))
            subjects = tuple(sorted(str(c.subject.key) if c.subject else "-" for c in parsed.claims
                                    if c.sentence == index))
            key = (text, subjects, tuple(s[:3] for s in said))
            if key in seen:
                return True
            seen[key] = index
        return False

    # ------------------------------------------------------------------ descriptions
    def _coverage(self, ctx: _Context, qtype: str, params: dict) -> float:
        t = ctx.truth
        objs = t.objects_in(ctx.span)
        if qtype == "describe_object":
            objs = [params["object"]]
        events = [k for k in t.events_in(ctx.span) if t.events[k].object in objs]
        required: list[tuple[str, bool]] = []
        for k in events:
            e = t.events[k]
            required.append((f"event: {self._name(ctx, e.object)} {e.type} at frame {e.t}", k in ctx.matched))
        if qtype != "describe_events":
            for i in objs:
                required.append((f"object: {self._name(ctx, i)}", i in ctx.named))
                first = t.visible_frames(i, ctx.span)[0]
                motion = t.states[first][i].motion
                # "bounces off the bottom wall" also says it was moving down before
                own = [k for k in ctx.matched if t.events[k].object == i]
                first_told = min(own, key=lambda k: t.events[k].t) if own else None
                implied = (first_told is not None and t.events[first_told].type == "bounce"
                           and motion in WALL_OF and t.events[first_told].wall == WALL_OF[motion])
                required.append((f"motion: {self._name(ctx, i)} {motion} when first seen",
                                 i in ctx.told_motion or implied))
        for fact, ok in required:
            if not ok:
                ctx.facts.append(FactVerdict(fact, "not_mentioned"))
        return sum(ok for _, ok in required) / len(required) if required else 1.0

    # ------------------------------------------------------------------ short answers
    def _about(self, ctx: _Context, claim: Claim, obj: int) -> bool:
        return claim.subject is None or obj in self.resolve(ctx, claim.subject)

    def _short_value(self, ctx: _Context, parsed: Parsed, qtype: str, params: dict) -> tuple[object, object]:
        t = ctx.truth
        claims = parsed.claims
        if qtype == "colour":
            obj, when = params["object"], params["when"]
            states = [c for c in claims if c.kind == "colour" and not c.negated and self._about(ctx, c, obj)
                      and (c.time is None or when == "any" or c.time == when)]
            changes = [c.value for c in claims if c.kind == "change_colour" and c.value and not c.negated
                       and self._about(ctx, c, obj)]
            if when == "end" and changes:
                return changes[-1], params["colour"]
            if states:
                return (states[-1] if when == "end" else states[0]).value, params["colour"]
            return (changes[0] if changes and when == "any" else None), params["colour"]
        if qtype == "shape":
            obj = params["object"]
            said = [c.value for c in claims if c.kind == "shape" and not c.negated and self._about(ctx, c, obj)]
            for m in parsed.mentions:
                if m.shape and not m.negated and not m.plural:
                    objs = self.resolve(ctx, m)
                    if not objs or obj in objs:
                        said.append(m.shape)
            return (said[0] if said else None), params["shape"]
        if qtype == "count":
            return self._count_value(ctx, parsed, params), params["count"]
        if qtype == "direction":
            obj = params["object"]
            mine = [c for c in claims if not c.negated and self._about(ctx, c, obj)]
            moves = [c.value for c in mine if c.kind in ("move", "start") and c.value]
            if moves:
                return moves[0], params["direction"]
            if any(c.kind == "still" for c in mine) or any(c.kind == "move" and c.negated and c.value is None
                                                          and self._about(ctx, c, obj) for c in claims):
                return "still", params["direction"]
            return None, params["direction"]
        if qtype == "colour_change":
            obj = params["object"]
            mine = [c for c in claims if not c.negated and self._about(ctx, c, obj)]
            changes = [c.value for c in mine if c.kind == "change_colour" and c.value]
            states = [c.value for c in mine if c.kind == "colour"]
            before = t.events[params["event"]].from_colour
            states = [c for c in states if c != before]
            return (changes[0] if changes else states[0] if states else None), params["colour"]
        if qtype == "which_object":
            for m in parsed.mentions:
                if m.negated or m.plural:
                    continue
                objs = self.resolve(ctx, m)
                if len(objs) == 1:
                    return objs[0], params["object"]
                if not objs:
                    return f"no such object: {m.text()}", params["object"]
            return None, params["object"]
        if qtype == "event_order":
            return self._order_value(ctx, parsed, params), params["answer"]
        if qtype == "when":
            return (parsed.time_words[0] if parsed.time_words else None), params["part"]
        if qtype == "yes_no":
            return self._polarity(ctx, parsed, params["fact"]), params["answer"]
        raise ValueError(qtype)

    def _count_value(self, ctx: _Context, parsed: Parsed, params: dict) -> int | None:
        what = params["what"]

        def fits(m: Mention | None) -> bool:
            return m is None or (m.shape is None if what == "objects" else m.shape in (None, what))

        counts = [c for c in parsed.claims if c.kind == "count"]
        fitting = [c for c in counts if fits(c.filter)]
        if fitting or counts:
            return (fitting or counts)[0].value  # type: ignore[return-value]
        named = {tuple(self.resolve(ctx, m)) for m in parsed.mentions
                 if not m.negated and not m.plural and fits(m) and (what == "objects" or m.shape == what)}
        return len(named) if named else None

    def _order_value(self, ctx: _Context, parsed: Parsed, params: dict) -> object:
        a, b = params["events"]
        told = {k: c.order for k, c in ctx.matched.items() if k in (a, b)}
        if params["ask"] == "before_after":
            if len(told) == 2 and told[a] != told[b]:
                return "before" if told[a] < told[b] else "after"
            return parsed.relation_words[0] if parsed.relation_words else None
        if len(told) == 2 and told[a] != told[b]:
            earlier, later = (a, b) if told[a] < told[b] else (b, a)
            return earlier if params["ask"] == "first" else later
        if len(told) == 1:
            return next(iter(told))
        objs = [ctx.truth.events[a].object, ctx.truth.events[b].object]
        for m in parsed.mentions:
            hit = [k for k, o in zip((a, b), objs) if o in self.resolve(ctx, m)]
            if len(hit) == 1:
                return hit[0]
        return None

    def _polarity(self, ctx: _Context, parsed: Parsed, fact: dict) -> str | None:
        if parsed.polarity:
            return parsed.polarity
        kind = fact["kind"]
        if kind == "exists":
            for m in parsed.mentions:
                if m.shape == fact["shape"] and m.colour in (None, fact["colour"]):
                    return "no" if m.negated else "yes"
            return None
        other_value = False  # the answer tells a different direction / colour: an implicit "no"
        for c in parsed.claims:
            if not self._about(ctx, c, fact["object"]):
                continue
            if kind == "move" and c.kind == "still":
                return "yes" if c.negated else "no"
            if c.kind != kind:
                continue
            wanted = fact.get("direction") if kind == "move" else fact.get("colour") if kind == "change_colour" else None
            if wanted and c.value not in (None, wanted):
                other_value = other_value or not c.negated
                continue
            return "no" if c.negated else "yes"
        return "no" if other_value else None
