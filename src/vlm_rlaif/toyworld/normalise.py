"""The first step of reading toy-world text: lower-case, expand contractions, tokenise, and rewrite
multi-word phrases to canonical tokens ("comes to a halt" -> STOP, "to the left" -> DIR:left, "at the
beginning" -> TIME:start). `toyworld.parse` reads clauses, mentions and claims off the result.
"""

from __future__ import annotations

import re

from vlm_rlaif.toyworld.lexicon import (
    COLOUR_WORDS,
    GENERIC_NOUNS,
    SHAPE_WORDS,
    SIZE_WORDS,
)


_CONTRACTIONS = [
    (r"\bcan't\b", "can not"), (r"\bcannot\b", "can not"), (r"\bwon't\b", "will not"),
    (r"n't\b", " not"), (r"\bit's\b", "it is"), (r"\bthere's\b", "there is"), (r"\bthat's\b", "that is"),
    (r"\bwhat's\b", "what is"), (r"\bhere's\b", "here is"), (r"'re\b", " are"), (r"'ll\b", " will"),
    (r"'m\b", " am"), (r"'ve\b", " have"), (r"'d\b", " would"), (r"'s\b", ""),
]


def tokenize(text: str) -> list[str]:
    text = text.lower().replace("\u2019", "'").replace("\u2018", "'").replace("colour", "color")
    for pattern, repl in _CONTRACTIONS:
        text = re.sub(pattern, repl, text)
    return re.findall(r"[a-z]+|\d+|[.,;:!?]", text)


def _forms(*stems: str) -> list[str]:
    """'move' -> move, moves, moved, moving (regular English verb forms)."""
    out = []
    for s in stems:
        base = s[:-1] if s.endswith("e") else s
        out += [s, s + "s", base + "ed", base + "ing"]
        if s.endswith(("sh", "ch", "x", "ss")):
            out += [s + "es"]
    return out


def _phrases() -> list[tuple[tuple[str, ...], tuple[str, ...]]]:
    """(word sequence, canonical tokens). Longest sequences win at each position."""
    table: list[tuple[str, list[str]]] = []

    def add(tokens: str, *phrases: str) -> None:
        for p in phrases:
            table.append((p, tokens.split()))

    walls = {"left": "left", "right": "right", "top": "top", "bottom": "bottom", "upper": "top",
             "lower": "bottom"}
    wall_nouns = ["wall", "edge", "side", "border", "boundary", "walls", "edges", "sides"]
    # Verbs that, with a wall after them, mean a bounce in this world ("hits the left wall").
    hit_verbs = ["hits", "hit", "hitting", "reaches", "reached", "reaching", "touches", "touched",
                 "touching", "bumps into", "runs into", "crashes into", "strikes"]
    for word, wall in walls.items():
        for noun in wall_nouns:
            add(f"WALL:{wall}", f"the {word} {noun}", f"{word} {noun}", f"off the {word} {noun}",
                f"against the {word} {noun}", f"the {word} {noun} of the screen",
                f"the {word} {noun} of the frame", f"off the {word} {noun} of the screen")
            for hit in hit_verbs:
                add(f"BOUNCE WALL:{wall}", f"{hit} the {word} {noun}")
        add(f"WALL:{wall}", f"off the {word}", f"against the {word}")
        for hit in hit_verbs:
            add(f"BOUNCE WALL:{wall}", f"{hit} the {word}")
    add("WALL:top", "the ceiling", "the top of the screen", "off the top of the screen")
    add("WALL:bottom", "the floor", "the bottom of the screen", "off the bottom of the screen")
    for hit in hit_verbs:
        add("BOUNCE WALL:any", f"{hit} a wall", f"{hit} the wall", f"{hit} an edge", f"{hit} the edge")
    add("WALL:any", "a wall", "the wall", "the walls", "a border", "an edge", "the edge", "the border",
        "the edges", "the boundary", "walls", "off a wall", "off the wall", "off the edge")

    directions = {
        "left": ["left", "leftward", "leftwards", "west", "to the left", "towards the left", "toward the left",
                 "to the left side", "towards the left side", "to the left of the screen", "to its left"],
        "right": ["right", "rightward", "rightwards", "east", "to the right", "towards the right",
                  "toward the right", "to the right side", "towards the right side", "to the right of the screen",
                  "to its right"],
        "up": ["up", "upward", "upwards", "north", "to the top", "towards the top", "toward the top",
               "to the top of the screen", "up the screen", "higher"],
        "down": ["down", "downward", "downwards", "south", "to the bottom", "towards the bottom",
                 "toward the bottom", "to the bottom of the screen", "down the screen", "lower"],
    }
    for d, words in directions.items():
        add(f"DIR:{d}", *words)

    add("APPEAR", *_forms("appear"), "shows up", "show up", "showed up", "showing up", "comes into view",
        "come into view", "came into view", "coming into view", "pops up", "pop up", "popped up", "pops in",
        "becomes visible", "become visible", "enters", "enter", "entered", "entering", "enters the scene",
        "enters the screen", "enters the frame", "emerges", "emerge", "emerged", "arrives", "arrive", "arrived",
        "comes in", "is added", "gets added", "materializes", "materialises", "joins")
    add("COPULA", "appears to be", "appear to be", "seems to be", "looks like", "look like", "ends up",
        "end up", "ended up", "ending up", "is colored", "turns out to be")
    add("DISAPPEAR", *_forms("disappear", "vanish"), "goes away", "go away", "went away", "going away",
        "is gone", "are gone", "leaves", "leave", "leaving", "left the screen", "left the scene",
        "left the frame", "left the video", "left the view", "has left", "exits", "exit", "exited",
        "fades away", "fades out", "fades", "faded", "goes out of view", "goes out of sight",
        "no longer visible", "is no longer there", "is no longer visible", "is removed", "gets removed",
        "goes off screen", "goes off the screen", "moves off the screen", "out of the picture", "gone")
    add("STOP", *_forms("stop", "halt"), "stopped", "stopping", "stops moving", "stop moving",
        "stopped moving", "comes to a stop", "come to a stop", "came to a stop", "comes to a halt",
        "comes to rest", "come to rest", "freezes", "freeze", "froze", "stays still from then on",
        "no longer moves", "stops there", "comes to a standstill", "pauses")
    add("START", "starts moving", "start moving", "started moving", "starts to move", "start to move",
        "started to move", "begins to move", "begin to move", "began to move", "begins moving",
        "begin moving", "began moving", "starts going", "starts sliding", "sets off", "set off",
        "gets moving", "starts its movement", "begins its movement", "starts travelling", "starts traveling",
        "starts", "begins")
    add("STILL", "stays still", "stay still", "stayed still", "staying still", "is still", "are still",
        "remains still", "remain still", "remained still", "stands still", "stand still", "standing still",
        "stays in place", "stay in place", "staying in place", "remains in place", "remains stationary",
        "stays stationary", "stays put", "stationary", "motionless", "static", "not moving",
        "does not move", "do not move", "did not move", "is not moving", "without moving", "at rest", "stays where it is", "sits still",
        "does not change position", "does not go anywhere", "keeps still", "in the same place",
        "in the same spot", "does not budge", "still")
    # "never moves": still on every frame, not just at some point
    add("STILL ALWAYS", "never moves", "never move", "never moved", "never moving", "does not move at all",
        "do not move at all", "did not move at all", "not moving at all", "does not move once")
    add("ALWAYS", "the whole time", "the whole video", "throughout", "all the time", "all along", "the entire time",
        "the entire video", "all the way through", "the whole way", "at all times", "from start to end",
        "from start to finish", "for the whole video", "the whole time long", "constantly")
    add("BOUNCE", *_forms("bounce", "rebound", "ricochet"), "bounces back", "bounce back", "bounced back",
        "rebounds", "bumps into", "bumps against", "reflects off", "is reflected")
    add("CHANGE", *_forms("turn", "change", "switch"), "became", "becomes", "become", "becoming",
        "changes color", "change color", "changed color", "changes its color", "changed its color",
        "changes color to", "turns into", "turn into", "turned into", "changes into", "changes to",
        "change to", "changed to", "switches to", "flashes", "flash", "flashed", "goes from", "went from",
        "is now", "now is")
    add("MOVE", *_forms("move", "slide", "glide", "travel", "drift", "head", "roll", "float", "shift"),
        "goes", "go", "going", "went", "runs", "ran", "comes back", "come back", "came back", "returns",
        "keeps moving", "keeps going", "continues moving", "continues", "is moving", "heads")
    add("TIME:start", "at the start", "at the beginning", "in the beginning", "early on", "early",
        "at the start of the video", "at the beginning of the video", "in the first part",
        "at the very start", "at the very beginning", "in the first third", "the start",
        "the beginning", "in the opening")
    # "at first" is relative to the object ("appears and at first does not move"), not a third.
    add("IGNORE", "at first", "initially", "to begin with", "first of all", "in total", "altogether")
    add("TIME:middle", "in the middle", "in the middle of the video", "halfway", "halfway through", "midway",
        "midway through", "in the second part", "partway through", "in the second third", "the middle",
        "mid video", "at the midpoint")
    add("TIME:end", "at the end", "at the end of the video", "near the end", "towards the end", "toward the end",
        "in the end", "by the end", "at the very end", "in the last part", "late in the video", "in the final part",
        "at the close", "in the last third", "the end", "late")
    add("SEQ", "then", "after that", "afterwards", "afterward", "next", "later", "later on", "subsequently",
        "after this", "eventually", "finally", "lastly", "at last", "and then", "and later", "until",
        "followed by", "soon")
    add("BACK", "before that", "earlier", "previously", "prior to that", "before this", "just before that")
    add("SIMUL", "at the same time", "meanwhile", "simultaneously", "while", "whereas", "whilst",
        "at that moment", "at the same moment", "in the meantime", "when", "as")
    # No "right after": "moves right after the circle stops" is a direction, then "after".
    add("AFTER", "after", "just after", "shortly after", "soon after")
    add("BEFORE", "before", "just before", "shortly before")
    add("SEQ", "right after that", "right after this", "immediately after that", "shortly after that",
        "soon after that", "just after that", "shortly afterwards", "soon afterwards", "after which",
        "shortly after this", "and after that")
    add("EXIST", "there is", "there are", "there was", "there were", "i see", "i can see", "we see",
        "we can see", "you can see", "can be seen", "the video shows", "the video contains",
        "the clip shows", "shows", "show", "features", "contains", "there appears to be", "there seems to be",
        "is there", "are there", "visible", "present")
    add("COPULA", "is", "are", "was", "were", "looks", "look", "seems", "seem", "remains", "stays", "has the color",
        "is colored", "is in color", "is of color", "in color", "color")
    add("NEG", "not", "never", "no longer", "neither", "nor", "without")
    add("PRON", "it", "its", "this", "that one", "this one", "the same object", "the same shape", "the former",
        "the latter", "itself")
    add("PRONS", "they", "both", "both of them", "all of them", "each of them", "both shapes", "both objects",
        "all three", "all the objects", "all the shapes", "the two", "the three")
    add("IGNORE", "right away", "that is right", "all right", "slows down", "slow down", "speeds up",
        "speed up", "again", "back", "also", "too", "only", "just", "still moving", "keeps", "steadily", "slowly", "quickly", "fast", "a bit", "a little",
        "then stays", "of the video", "of the clip", "on the screen", "on screen", "in the video",
        "in the clip", "in this clip", "in this video", "in this part", "the screen", "at some point",
        "on a dark background", "on the dark background", "on a black background", "i think", "it seems",
        "the answer is", "as you can see", "we can see that", "i can see that")
    table.sort(key=lambda item: -len(item[0].split()))
    return [(tuple(p.split()), tuple(toks)) for p, toks in table]


_PHRASES = _phrases()
_FIRST_WORDS: dict[str, list[tuple[tuple[str, ...], tuple[str, ...]]]] = {}
for _words, _toks in _PHRASES:
    _FIRST_WORDS.setdefault(_words[0], []).append((_words, _toks))

# Words after which "still" is the adverb ("is still red", "still moves"), not "not moving".
_STILL_ADVERB_NEXT = set(COLOUR_WORDS) | {"moving", "moves", "going", "goes", "there", "visible", "present",
                                          "a", "an", "the", "in", "on", "at", "heading", "sliding"}
# Verb forms that agree with a plural subject ("the square and the circle move left").
PLURAL_VERBS = {"move", "stay", "turn", "disappear", "appear", "stop", "bounce", "are", "go", "slide",
                "remain", "change", "become", "vanish", "start", "begin", "were"}


def canonicalize(words: list[str]) -> list[tuple[str, str]]:
    """(canonical token, original text) pairs. Phrases become tokens like DIR:left, STOP; object
    words (colours, shapes, sizes, numbers) stay words."""
    out: list[tuple[str, str]] = []
    i = 0
    while i < len(words):
        w = words[i]
        if w == "still" and i + 1 < len(words) and words[i + 1] in _STILL_ADVERB_NEXT:
            i += 1  # the adverb "still" adds nothing
            continue
        at_start = i == 0 or words[i - 1] in (".", "!", "?", ";", ",")
        if w == "right" and at_start and i + 1 < len(words) and words[i + 1] in ("at", "after", "before", "away"):
            i += 1  # "Right at the beginning": emphasis, not a direction
            continue
        if w in COLOUR_WORDS or w in SHAPE_WORDS or w in SIZE_WORDS:
            # Object words never start a phrase ("the left wall" starts at "the").
            out.append((w, w))
            i += 1
            continue
        for phrase, toks in _FIRST_WORDS.get(w, ()):
            if tuple(words[i:i + len(phrase)]) == phrase:
                after = words[i + len(phrase)] if i + len(phrase) < len(words) else ""
                if toks == ("PRONS",) and (after in SHAPE_WORDS or after in GENERIC_NOUNS or after in COLOUR_WORDS
                                           or after in SIZE_WORDS):
                    continue  # "both squares": a determiner, not "both" standing for the objects
                for tok in toks:
                    out.append((tok, " ".join(phrase)))
                i += len(phrase)
                break
        else:
            out.append((w, w))
            i += 1
    return out


__all__ = ["PLURAL_VERBS", "canonicalize", "tokenize"]
