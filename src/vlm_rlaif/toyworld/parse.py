"""Reading free text about the toy world: object mentions and the claims made about them.

The oracle's front end. It knows nothing of the truth; it turns an answer into:
- mentions: noun phrases naming objects ("the big red square", "a ball", "the red one");
- claims: (subject mention, kind, value, negated, time word, order on the answer's time line), e.g.
  "Then it turns blue" -> change_colour(blue) about the last subject, later than what came before;
- the answer's polarity (a leading yes/no, or "It does." / "It doesn't."), its time words and its
  before/after words.

How: `toyworld.normalise` lower-cases, expands contractions, tokenises and rewrites multi-word
phrases to canonical tokens (synonyms: "comes to a halt" -> STOP, "leftward" / "to the left" ->
DIR:left, "off the top edge" -> WALL:top, "at the beginning" -> TIME:start, ...); this module splits
the tokens into clauses at punctuation and connectives and reads each clause left to right. A clause
without its own subject inherits the previous one ("It moves left and then stops"). Clause order
gives the time line, adjusted by connectives: "X after Y" puts Y first, "at the same time" ties,
"before that" goes back.
"""

from __future__ import annotations

from dataclasses import dataclass

from vlm_rlaif.toyworld.lexicon import (
    COLOUR_WORDS,
    GENERIC_NOUNS,
    NO_WORDS,
    NON_OBJECT_NOUNS,
    NUMBER_VALUES,
    PLURAL_NOUNS,
    SHAPE_WORDS,
    SIZE_WORDS,
    YES_WORDS,
)
from vlm_rlaif.toyworld.normalise import PLURAL_VERBS, canonicalize, tokenize

EVENT_KINDS = ("appear", "disappear", "change_colour", "stop", "start", "bounce")


@dataclass(frozen=True)
class Mention:
    colour: str | None
    shape: str | None
    size: str | None
    plural: bool
    position: int  # token index in the answer (mentions sort by it)
    negated: bool = False  # "no green triangle"

    @property
    def key(self) -> tuple:
        return (self.colour, self.shape)

    def text(self) -> str:
        words = [w for w in (self.size, self.colour, self.shape or "object") if w]
        return " ".join(words)


@dataclass
class Claim:
    kind: str  # exists | colour | shape | size | move | still | count | one of EVENT_KINDS
    subject: Mention | None  # None: the default subject (the object the question is about)
    value: str | int | None = None
    negated: bool = False
    time: str | None = None  # start | middle | end
    order: float = 0.0
    sentence: int = 0
    filter: Mention | None = None  # count claims: what is counted (None: whatever the question counts)
    # Its sentence opens with a sequence word or a time word ("Then ...", "At the end, ..."): it is
    # placed after everything told before. Without one, a new sentence about another object need
    # not be later ("The square moves left and stops. The circle moves up.").
    anchored: bool = False
    always: bool = False  # "the whole time", "never moves": true on every visible frame of its window


@dataclass
class Parsed:
    claims: list[Claim]
    mentions: list[Mention]
    polarity: str | None
    time_words: list[str]
    relation_words: list[str]  # "before" / "after", in order
    sentences: dict[int, str]  # sentence index (Claim.sentence) -> its normalised words


# ---------------------------------------------------------------------- clause reading

_SPLITTERS = {".", "!", "?", ";", ":", ",", "and", "but", "or", "which", "that", "who", "so", "SEQ", "BACK",
              "SIMUL", "AFTER", "BEFORE"}
_SENTENCE_END = {".", "!", "?", ";"}
_CONNECTIVES = ("SEQ", "BACK", "SIMUL", "AFTER", "BEFORE")
_PREDICATES = {"APPEAR": "appear", "DISAPPEAR": "disappear", "STOP": "stop", "START": "start",
               "STILL": "still", "BOUNCE": "bounce", "CHANGE": "change_colour", "MOVE": "move"}
_DETERMINERS = {"a", "an", "the", "another", "other", "some", "any", "each", "every", "both", "all", "one"}
_POSITION_WORDS = {"on", "at", "in", "near", "from"}  # "on the left" is a place, not a direction
_NO_SUBJECT = Mention(None, None, None, False, -1)  # a clause about the video or the screen


@dataclass
class _Clause:
    tokens: list[tuple[str, str]]  # (canonical token, original text)
    connector: str  # what opened it: "", ",", "and", or one of _CONNECTIVES
    sentence: int
    sentence_start: bool


def split_clauses(tokens: list[tuple[str, str]]) -> list[_Clause]:
    clauses: list[_Clause] = []
    current: list[tuple[str, str]] = []
    connector, sentence, start = "", 0, True
    for tok, text in tokens:
        if tok not in _SPLITTERS:
            current.append((tok, text))
            continue
        if current:
            clauses.append(_Clause(current, connector, sentence, start))
            current, start, connector = [], False, ""
        if tok in _SENTENCE_END:
            sentence, start, connector = sentence + 1, True, ""
        elif tok in _CONNECTIVES or connector not in _CONNECTIVES:
            connector = tok  # ", and then" -> SEQ
    if current:
        clauses.append(_Clause(current, connector, sentence, start))
    return clauses


@dataclass
class _Item:
    kind: str  # mention colour size dir wall time pred neg copula exist pron nonobject number from to
    value: object
    at: int  # index within the clause
    text: str = ""  # the words it came from


def _noun_one(toks: list[tuple[str, str]], j: int) -> bool:
    """Is toks[j] == 'one' a noun here ('the red one') rather than the number?"""
    return j > 0 and toks[j - 1][0] in (set(COLOUR_WORDS) | set(SIZE_WORDS) | {"the", "this", "that"})


def _read_mention(toks: list[tuple[str, str]], i: int) -> tuple[Mention | None, int]:
    """A noun phrase at i: [no|not] [det] [size] [colour] [size] noun. Returns (mention, next index);
    a colour with no noun after it is a bare colour, not a mention."""
    j = i
    negated = False
    if toks[j][0] == "no" or (toks[j][0] == "NEG" and toks[j][1] == "not"):
        negated, j = True, j + 1
    while j < len(toks) and toks[j][0] in _DETERMINERS and not (toks[j][0] == "one" and _noun_one(toks, j)):
        j += 1
    size = colour = None
    while j < len(toks) and (toks[j][0] in SIZE_WORDS or (toks[j][0] in COLOUR_WORDS and colour is None)):
        if toks[j][0] in SIZE_WORDS:
            size = SIZE_WORDS[toks[j][0]]
        else:
            colour = COLOUR_WORDS[toks[j][0]]
        j += 1
        if j < len(toks) and toks[j][0] in ("colored", "coloured"):
            j += 1
    if j < len(toks) and toks[j][0] in SHAPE_WORDS:
        word = toks[j][0]
        if j + 1 < len(toks) and toks[j + 1][0] in GENERIC_NOUNS and toks[j + 1][0] != "one":
            j += 1  # "triangular shape", "round object"
            word = toks[j][0]
        return Mention(colour, SHAPE_WORDS[toks[j if word in SHAPE_WORDS else j - 1][0]], size,
                       word in PLURAL_NOUNS, -1, negated), j + 1
    if j < len(toks) and toks[j][0] in GENERIC_NOUNS and (colour or size or j > i):
        word = toks[j][0]
        return Mention(colour, None, size, word in PLURAL_NOUNS or word == "ones", -1, negated), j + 1
    return None, i


def _items(toks: list[tuple[str, str]], base: int) -> list[_Item]:
    """The clause's meaningful pieces, left to right. base: the clause's offset in the answer (so
    mentions get answer-wide positions)."""
    items: list[_Item] = []
    i = 0
    while i < len(toks):
        tok, text = toks[i]
        mention, nxt = _read_mention(toks, i)
        if mention is not None:
            items.append(_Item("mention", Mention(mention.colour, mention.shape, mention.size, mention.plural,
                                                  base + i, mention.negated), i))
            i = nxt
            continue
        if tok in COLOUR_WORDS:
            if i + 1 < len(toks) and toks[i + 1][0] in NON_OBJECT_NOUNS:
                i += 2  # "a blue background": not about an object
                continue
            items.append(_Item("colour", COLOUR_WORDS[tok], i))
        elif tok in SIZE_WORDS:
            items.append(_Item("size", SIZE_WORDS[tok], i))
        elif tok.startswith("DIR:"):
            before = [t for t, _ in toks[max(0, i - 2):i] if t != "the"]
            if not (before and before[-1] in _POSITION_WORDS):
                items.append(_Item("dir", tok[4:], i))
        elif tok.startswith("WALL:"):
            items.append(_Item("wall", tok[5:], i))
        elif tok.startswith("TIME:"):
            items.append(_Item("time", tok[5:], i))
        elif tok in _PREDICATES:
            items.append(_Item("pred", _PREDICATES[tok], i, text))
            if text.split()[0] in PLURAL_VERBS:
                items.append(_Item("plural_verb", None, i))
        elif tok in ("NEG", "no", "nothing"):
            items.append(_Item("neg", None, i))
        elif tok == "ALWAYS":
            items.append(_Item("always", None, i))
        elif tok in ("COPULA", "EXIST", "PRON", "PRONS"):
            items.append(_Item(tok.lower(), None, i, text))
            if tok == "COPULA" and text in ("are", "were"):
                items.append(_Item("plural_verb", None, i))
        elif tok in NON_OBJECT_NOUNS:
            items.append(_Item("nonobject", None, i))
        elif tok.isdigit() or (tok in NUMBER_VALUES and not (tok == "one" and _noun_one(toks, i))):
            items.append(_Item("number", int(tok) if tok.isdigit() else NUMBER_VALUES[tok], i))
        elif tok == "from":
            items.append(_Item("from", None, i))
        elif tok in ("to", "into"):
            items.append(_Item("to", None, i))
        i += 1
    return items


class _Reader:
    """Reads clauses in order, keeping the running subject and the answer's time line."""

    def __init__(self) -> None:
        self.claims: list[Claim] = []
        self.mentions: list[Mention] = []
        self.subject: Mention | None = None  # None: the default subject
        self.last_order = 0.0  # the latest place on the time line so far
        self.clause_order = 0.0  # the previous clause's place
        self.before_lead: tuple[int, int] | None = None  # claims of a "Before X," clause
        self.sentence_time: tuple[int, str | None] = (-1, None)
        self.mention_only: Mention | None = None  # the previous clause was just "the red square"
        self.sentence_mentions: dict[int, list[Mention]] = {}  # singular mentions of each sentence
        self.anchored = False  # the current sentence opens with a sequence or time word
        self.last_verb: str | None = None  # the previous clause's last verb ("turns yellow and then blue")

    def read(self, clause: _Clause, base: int) -> None:
        items = _items(clause.tokens, base)
        kinds = [it.kind for it in items]
        self.mentions += [it.value for it in items if it.kind == "mention"]  # type: ignore[misc]

        # ---- place on the answer's time line ("and" alone states no order: "appears and moves up")
        if clause.connector == "SIMUL":
            order = self.last_order
        elif clause.connector == "and":
            order = self.clause_order
        elif clause.connector == "BACK" or (clause.connector == "AFTER" and not clause.sentence_start):
            order = self.last_order - 0.5  # "X after Y": Y is earlier than X
        else:
            order = self.last_order + 1.0
        if self.before_lead is not None and not clause.sentence_start:
            for c in self.claims[self.before_lead[0]:self.before_lead[1]]:
                c.order = order + 0.5  # "Before X, Y": X is later than Y
            self.before_lead = None
        self.last_order = max(self.last_order, order)
        self.clause_order = order
        first_claim = len(self.claims)

        # ---- time word (a sentence-initial one covers the rest of the sentence)
        time = next((it.value for it in items if it.kind == "time"), None)
        if time is not None and clause.sentence_start and items[0].kind == "time":
            self.sentence_time = (clause.sentence, time)  # type: ignore[assignment]
        elif time is None and self.sentence_time[0] == clause.sentence:
            time = self.sentence_time[1]

        # ---- subject: a mention before the verb, else a pronoun or nothing -> the running subject
        first_verb = next((n for n, k in enumerate(kinds) if k in ("pred", "copula", "dir", "wall")), len(items))
        own: Mention | None = None
        subject: Mention | None = self.subject
        group: list[Mention] = []  # "both", "they": every object of this (or the last) sentence
        for it in items[:first_verb]:
            if it.kind == "mention":
                own = it.value  # type: ignore[assignment]
                break
            if it.kind == "pron":
                break
            if it.kind == "prons":
                group = self.sentence_mentions.get(clause.sentence) or \
                    self.sentence_mentions.get(max([k for k in self.sentence_mentions if k < clause.sentence],
                                                   default=-1), [])
                group = list(dict.fromkeys(group))
                subject = group[0] if group else _NO_SUBJECT
                break
            if it.kind == "nonobject":
                subject = _NO_SUBJECT
                break
        if own is None and "exist" in kinds:
            own = next((it.value for it in items if it.kind == "mention"), None)  # type: ignore[assignment]
        if own is not None:
            subject = _NO_SUBJECT if own.plural else own
            if not own.plural and not own.negated:
                self.subject = own

        if clause.sentence_start:
            self.anchored = clause.connector in _CONNECTIVES or (bool(items) and items[0].kind == "time")

        always = "always" in kinds

        def add(kind: str, value=None, negated: bool = False, subj: Mention | None = subject,
                filt: Mention | None = None) -> None:
            self.claims.append(Claim(kind, subj, value, negated, time, order, clause.sentence, filt, self.anchored,
                                     always and kind in ("colour", "move", "still")))

        negs = [it.at for it in items if it.kind == "neg"]
        copula = next((it.at for it in items if it.kind == "copula"), None)
        change = next((it.at for it in items if it.kind == "pred" and it.value == "change_colour"), None)

        # ---- mentions: existence, attributes after a copula, counts
        for n, it in enumerate(items):
            if it.kind == "number":
                following = items[n + 1] if n + 1 < len(items) else None
                if following is None or following.kind != "mention":
                    add("count", it.value, subj=None)
                continue
            if it.kind != "mention":
                continue
            m: Mention = it.value  # type: ignore[assignment]
            if n > 0 and items[n - 1].kind == "number":
                add("count", items[n - 1].value, subj=None, filt=m)
                continue
            if m.plural:
                if m.negated:  # "no triangles"
                    add("count", 0, subj=None, filt=m)
                continue
            negated = m.negated or (any(q < it.at for q in negs) and ("exist" in kinds or copula is not None))
            if copula is not None and it.at > copula and m is not own:
                for attr in ("shape", "colour", "size"):  # "the red object is a square"
                    if getattr(m, attr):
                        add(attr, getattr(m, attr), negated)
                continue
            if change is not None and it.at > change and m.colour:
                continue  # "turns into a blue square": the change's colour, read below
            self.claims.append(Claim("exists", m, None, negated, time, order, clause.sentence))
            if m.size and not negated:
                self.claims.append(Claim("size", m, m.size, False, time, order, clause.sentence))

        # ---- verbs
        # "does not move to the left" denies one direction; it does not say "still"
        for n, it in enumerate(items[:-1]):
            if it.kind == "pred" and it.value == "still" and items[n + 1].kind == "dir" and \
                    any(w in it.text.split() for w in ("not", "never")):
                items[n] = _Item("neg", None, it.at - 0.5)  # type: ignore[arg-type]
                items.insert(n + 1, _Item("pred", "move", it.at, "move"))
        negs = [it.at for it in items if it.kind == "neg"]
        preds = [it for it in items if it.kind == "pred"]
        used_colours: set[int] = set()
        for it in preds:
            negated = any(q < it.at for q in negs)
            after = [x for x in items if x.at > it.at]
            if it.value == "change_colour":
                colours = sorted([(x.value, x.at) for x in after if x.kind == "colour"]
                                 + [(x.value.colour, x.at) for x in after  # type: ignore[union-attr]
                                    if x.kind == "mention" and x.value.colour], key=lambda c: c[1])
                direction = next((x.value for x in after if x.kind == "dir"), None)
                if not colours and direction is not None:
                    add("move", direction, negated)  # "turns left"
                    continue
                frm = next((x.at for x in after if x.kind == "from"), None)
                to = next((x.at for x in after if x.kind == "to"), None)
                target = None
                for colour, at in colours:
                    used_colours.add(at)
                    if frm is not None and frm < at and (to is None or at < to):
                        add("colour", colour)  # "from red (to blue)": it was red
                    else:
                        target = colour
                add("change_colour", target, negated)
            elif it.value in ("move", "start"):
                direction = next((x.value for x in after if x.kind == "dir"), None)
                add(it.value, direction, negated)  # type: ignore[arg-type]
            elif it.value == "bounce":
                wall = next((x.value for x in after if x.kind == "wall"), None)
                add("bounce", None if wall == "any" else wall, negated)
            else:
                add(it.value, None, negated)  # type: ignore[arg-type]
        # Directions not taken by a move/start/turn verb: "to the left.", "bounces back to the left".
        for it in items:
            if it.kind == "dir":
                owner = max((p for p in preds if p.at < it.at), key=lambda p: p.at, default=None)
                if owner is None or owner.value not in ("move", "start", "change_colour"):
                    add("move", it.value, any(q < it.at for q in negs))
            elif it.kind == "wall" and not preds:
                add("bounce", None if it.value == "any" else it.value)
        # A colour alone right after a colour change repeats the verb: "turns yellow and then blue".
        elliptic = not preds and copula is None and own is None and self.last_verb == "change_colour"
        # Bare colours and sizes: state claims ("it is red", "red.", "blue at the end").
        for it in items:
            if it.kind == "colour" and elliptic:
                add("change_colour", it.value, any(q < it.at for q in negs))
            elif it.kind == "colour" and it.at not in used_colours and not (change is not None and it.at > change):
                add("colour", it.value, any(q < it.at for q in negs))
            elif it.kind == "size" and copula is not None and it.at > copula:
                add("size", it.value, any(q < it.at for q in negs))

        # ---- "the square and the circle move left": a plural verb speaks for both
        new = self.claims[first_claim:]
        for other in group[1:]:
            for c in new:
                if c.subject is group[0] and c.kind not in ("exists", "size", "count"):
                    self.claims.append(Claim(c.kind, other, c.value, c.negated, c.time, c.order, c.sentence))
        self.sentence_mentions.setdefault(clause.sentence, []).extend(
            it.value for it in items if it.kind == "mention" and not it.value.plural and not it.value.negated)  # type: ignore[union-attr]
        if (self.mention_only is not None and clause.connector == "and" and own is not None
                and ("plural_verb" in kinds or "prons" in kinds)):
            for c in new:
                if c.kind not in ("exists", "size", "count") and c.subject is own:
                    self.claims.append(Claim(c.kind, self.mention_only, c.value, c.negated, c.time, c.order,
                                             c.sentence))
        said_something = any(c.kind not in ("exists", "size") for c in new)
        self.mention_only = own if (own is not None and not said_something and "exist" not in kinds) else None
        if clause.connector == "BEFORE" and clause.sentence_start:
            self.before_lead = (first_claim, len(self.claims))
        verbs = [c.kind for c in self.claims[first_claim:] if c.kind in EVENT_KINDS]
        self.last_verb = verbs[-1] if verbs else (None if preds or own is not None else self.last_verb)


def parse(text: str) -> Parsed:
    words = tokenize(text)
    tokens = canonicalize(words)
    polarity = None
    if words and (words[0] in YES_WORDS or words[0] in NO_WORDS):
        nxt = words[1] if len(words) > 1 else ""
        if not (nxt in COLOUR_WORDS or nxt in SHAPE_WORDS or nxt in SIZE_WORDS or nxt in GENERIC_NOUNS):
            polarity = "yes" if words[0] in YES_WORDS else "no"
    if polarity is None:
        polarity = _auxiliary_polarity(tokens)
    time_words = [t[5:] for t, _ in tokens if t.startswith("TIME:")]
    relation_words = []
    for tok, text_ in tokens:
        if tok in ("AFTER", "BEFORE"):
            relation_words.append(tok.lower())
        elif tok == "SEQ" and text_ not in ("then", "and then", "next", "until", "finally", "lastly", "at last",
                                            "eventually", "soon"):
            relation_words.append("after")  # "later", "after that", "afterwards", ...
        elif tok == "BACK":
            relation_words.append("before")  # "earlier", "before that", ...
        elif tok in ("first", "firstly", "sooner"):
            relation_words.append("before")
        elif tok == "second":
            relation_words.append("after")
    reader = _Reader()
    base = 0
    for clause in split_clauses(tokens):
        reader.read(clause, base)
        base += len(clause.tokens) + 1
    sentences: dict[int, str] = {}
    index, words_so_far = 0, []
    for tok, text_ in tokens + [(".", ".")]:
        if tok in _SENTENCE_END:
            if words_so_far:
                sentences[index] = " ".join(words_so_far)
            index, words_so_far = index + 1, []
        else:
            words_so_far.append(text_)
    claims = [c for c in _dedupe(reader.claims) if c.subject is not _NO_SUBJECT]
    return Parsed(claims, reader.mentions, polarity, time_words, relation_words, sentences)


_AUXILIARIES = {"does", "did", "do", "is", "was", "are", "were", "will", "can", "has", "have"}


def _auxiliary_polarity(tokens: list[tuple[str, str]]) -> str | None:
    """"It does." / "It doesn't, it stays white." / "There isn't.": a short answer made of a
    subject, an auxiliary and maybe "not", alone in its first clause."""
    first: list[str] = []
    for tok, _ in tokens:
        if tok in _SPLITTERS:
            break
        first.append(tok)
    if len(first) < 2 or first[0] not in ("PRON", "EXIST", "PRONS", "they", "there"):
        return None
    rest = first[1:]
    if first[0] == "EXIST":  # "there is" already holds the auxiliary
        rest = ["is"] + rest
    if rest[0] not in _AUXILIARIES or any(t not in ("NEG",) for t in rest[1:]):
        return None
    return "no" if "NEG" in rest else "yes"


def _dedupe(claims: list[Claim]) -> list[Claim]:
    """One event said twice in one sentence ("hits the right wall and bounces back") is one claim."""
    out: list[Claim] = []
    for c in claims:
        if c.kind in EVENT_KINDS and not c.negated:
            twin = next((d for d in out if d.sentence == c.sentence and d.kind == c.kind and not d.negated
                         and d.subject == c.subject and (d.value is None or c.value is None or d.value == c.value)),
                        None)
            if twin is not None:
                if twin.value is None:
                    twin.value = c.value
                continue
        out.append(c)
    return out
