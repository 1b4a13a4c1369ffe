"""Wrong answers for the judge-skill examples: a true fact list edited to lie in one named way,
then realised with the same grammar as true answers.

Each corruption is built to be wrong by construction (the invented colour+shape exists nowhere,
the new direction is one the object never takes, the swapped events are order_gap frames apart, ...);
tests check that the oracle agrees on every one. Reasons use "{x}" for the answer's letter.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from vlm_rlaif.toyworld.config import ToyWorldConfig
from vlm_rlaif.toyworld.describe import Fact, Name, Speaker
from vlm_rlaif.toyworld.lexicon import DIRECTION_PHRASE, DIRECTIONS, WALLS
from vlm_rlaif.toyworld.world import Truth

LONG_CORRUPTIONS = ("wrong_colour", "wrong_shape", "wrong_direction", "wrong_order", "invented_object",
                    "invented_event", "omission", "repetition")


def _exists_as(truth: Truth, colour: str, shape: str) -> bool:
    return any(o.shape == shape and colour in o.colours for o in truth.objects)


def _clause(fact: Fact, rng: np.random.Generator) -> str:
    sp = Speaker(rng)
    sp.mentioned.add((fact.name.colour, fact.name.shape))
    bare = Fact(fact.kind, fact.obj, fact.t, fact.name, value=fact.value, event=fact.event)
    return f"{sp.np(fact.name, definite=True)} {sp.event_vp(bare)}"


def _name_text(name: Name) -> str:
    return f"{name.colour} {name.shape}"


def false_event(truth: Truth, span: tuple[int, int], rng: np.random.Generator, cfg: ToyWorldConfig,
                obj: int | None = None) -> tuple[Fact, str] | None:
    """An event that did not happen to an object in span (obj if given): (fact, reason)."""
    ids = [i for i in truth.objects_in(span) if obj is None or i == obj]
    options: list[Fact] = []
    for i in ids:
        o = truth.objects[i]
        frames = truth.visible_frames(i, span)
        own = [truth.events[k] for k in truth.events_in(span) if truth.events[k].object == i]
        types = {e.type for e in own}
        t = int(frames[len(frames) // 2])
        name = Name(truth.colour_at(i, t), o.shape)
        if "disappear" not in types and o.last <= span[1]:
            # Still there at the span's end (or it left at a later frame): "disappears" is false.
            options.append(Fact("disappear", i, t, name))
        if "stop" not in types:
            options.append(Fact("stop", i, t, name))
        for c in cfg.colours:
            if c not in truth.colours_in(i, span) and c not in o.colours:
                options.append(Fact("change_colour", i, t, name, value=c))
        walls = {e.wall for e in own if e.type == "bounce"}
        for w in WALLS:
            if w not in walls:
                options.append(Fact("bounce", i, t, name, value=w))
        if "start" not in types:
            for d in DIRECTIONS:
                options.append(Fact("start", i, t, name, value=d))
    if not options:
        return None
    # Spread the choice over kinds, not over the many colour / wall / direction variants.
    kinds = sorted({f.kind for f in options})
    kind = kinds[int(rng.integers(len(kinds)))]
    pool = [f for f in options if f.kind == kind]
    fact = pool[int(rng.integers(len(pool)))]
    return fact, f"Answer {{x}} says {_clause(fact, rng)}, but that does not happen."


def corrupt_long(truth: Truth, facts: list[Fact], span: tuple[int, int], rng: np.random.Generator,
                 cfg: ToyWorldConfig, corruption: str, *, style: str, count: int | None = None,
                 ) -> tuple[str, str] | None:
    """A wrong long answer of the given corruption: (text, reason), or None when this fact list
    offers nothing to corrupt that way."""
    edited = _edit(truth, facts, span, rng, cfg, corruption)
    if edited is None:
        return None
    bad_facts, reason = edited
    text = Speaker(rng).describe(bad_facts, span, style=style, order_gap=cfg.order_gap, count=count)
    if corruption == "repetition":
        sentences = [s for s in text.split(". ") if s]
        k = int(rng.integers(len(sentences)))
        again = sentences[k].rstrip(".") + "."
        text = f"{text} {again} {again}" if rng.random() < 0.5 else text.replace(again, f"{again} {again}", 1)
    return text, reason


def _edit(truth: Truth, facts: list[Fact], span: tuple[int, int], rng: np.random.Generator,
          cfg: ToyWorldConfig, corruption: str) -> tuple[list[Fact], str] | None:
    def pick(options: list):
        return options[int(rng.integers(len(options)))] if options else None

    objects = sorted({f.obj for f in facts if f.obj >= 0})
    events = [i for i, f in enumerate(facts) if f.event is not None]

    if corruption == "repetition":
        return list(facts), "Answer {x} repeats itself."

    if corruption == "wrong_colour":
        choices = []
        for i in objects:
            o = truth.objects[i]
            first_colour = next(f.name.colour for f in facts if f.obj == i)
            for c in cfg.colours:
                if not _exists_as(truth, c, o.shape):
                    choices.append((i, first_colour, c))
        choice = pick(choices)
        if choice is None:
            return None
        i, old, new = choice
        shape = truth.objects[i].shape
        out = [replace(f, name=replace(f.name, colour=new)) if f.obj == i and f.name.colour == old else f
               for f in facts]
        return out, f"Answer {{x}} says the {shape} is {new}, but it is {old}."

    if corruption == "wrong_shape":
        choices = []
        for i in objects:
            o = truth.objects[i]
            for s in cfg.shapes:
                if s != o.shape and not any(_exists_as(truth, c, s) for c in o.colours):
                    choices.append((i, s))
        choice = pick(choices)
        if choice is None:
            return None
        i, new = choice
        o = truth.objects[i]
        out = [replace(f, name=replace(f.name, shape=new)) if f.obj == i else f for f in facts]
        return out, f"Answer {{x}} says the {o.colours[0]} object is a {new}, but it is a {o.shape}."

    if corruption == "wrong_direction":
        choices = []
        for k, f in enumerate(facts):
            if f.obj < 0:
                continue
            taken = {m for _, _, m in truth.motion_segments(f.obj, span)}
            slot = "value" if f.kind in ("motion", "start") else "then" if f.kind in ("appear", "bounce") else None
            if slot is None or getattr(f, slot) is None:
                continue
            for d in DIRECTIONS + ("still",):
                if d not in taken and not (f.kind in ("start", "bounce") and d == "still"):
                    choices.append((k, slot, d))
        choice = pick(choices)
        if choice is None:
            return None
        k, slot, d = choice
        f = facts[k]
        out = list(facts)
        out[k] = replace(f, **{slot: d})
        said = "does not move" if d == "still" else f"moves {DIRECTION_PHRASE[d]}"
        return out, f"Answer {{x}} says the {_name_text(f.name)} {said}, but it does not."

    if corruption == "wrong_order":
        pairs = [(a, b) for x, a in enumerate(events) for b in events[x + 1:]
                 if facts[b].t - facts[a].t >= cfg.order_gap
                 and (facts[a].obj != facts[b].obj or "appear" not in (facts[a].kind, facts[b].kind))]
        choice = pick(pairs)
        if choice is None:
            return None
        a, b = choice
        out = list(facts)
        out[a], out[b] = replace(facts[a], t=facts[b].t), replace(facts[b], t=facts[a].t)
        out.sort(key=lambda f: (f.kind not in ("exists", "motion"), f.t))
        return out, (f"Answer {{x}} gets the order wrong: {_clause(facts[a], rng)} before "
                     f"{_clause(facts[b], rng)}.")

    if corruption == "invented_object":
        fakes = [(c, s) for s in cfg.shapes for c in cfg.colours if not _exists_as(truth, c, s)]
        fake = pick(fakes)
        if fake is None:
            return None
        name = Name(*fake)
        motion = pick(list(DIRECTIONS) + ["still"])
        out = list(facts)
        if rng.random() < 0.5 and any(f.kind == "exists" for f in facts):
            out += [Fact("exists", -1, span[0], name), Fact("motion", -1, span[0], name, value=motion)]
        else:
            t = int(rng.integers(span[0] + 1, span[1] + 1))
            out.append(Fact("appear", -1, t, name, then=motion))
        out.sort(key=lambda f: (f.kind not in ("exists", "motion"), f.t))
        return out, f"Answer {{x}} mentions a {_name_text(name)}, but there is none."

    if corruption == "invented_event":
        target = pick(objects)
        if target is None:
            return None
        lie = false_event(truth, span, rng, cfg, target)
        if lie is None:
            return None
        fact, reason = lie
        # Tell it after the object's introduction, never before.
        after = max([f.t for f in facts if f.obj == target] + [span[0]])
        t = int(rng.integers(after, span[1] + 1))
        out = sorted(list(facts) + [replace(fact, t=t)], key=lambda f: (f.kind not in ("exists", "motion"), f.t))
        return out, reason

    if corruption == "omission":
        plain = [k for k in events if facts[k].kind != "appear"] or events
        k = pick(plain)
        if k is None:
            return None
        out = facts[:k] + facts[k + 1:]
        if not out:
            return None
        return out, f"Answer {{x}} leaves out that {_clause(facts[k], rng)}."

    raise ValueError(f"unknown corruption {corruption!r}; known: {', '.join(LONG_CORRUPTIONS)}")
