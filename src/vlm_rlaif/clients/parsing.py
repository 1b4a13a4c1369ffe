"""Strict readers of judge replies: each returns a value or raises InvalidReply with the reason.

They never guess. A reply that names both choices without a clear verdict, a score given as a range
("4 or 5"), a number out of range or an empty reply is invalid; the caller retries or records it
as invalid (see ChatClient.complete(..., validate=...)).
"""

from __future__ import annotations

import ast
import json
import math
import re
from typing import NamedTuple


class InvalidReply(ValueError):
    """A judge reply that does not say what was asked, unambiguously."""

    def __init__(self, reason: str, text: str | None = None) -> None:
        self.reason = reason
        self.text = text
        shown = "" if text is None else f": {_excerpt(text)!r}"
        super().__init__(f"{reason}{shown}")


class YesNoScore(NamedTuple):
    yes: bool
    score: int


# -- choices ("A" or "B") ---------------------------------------------------------------------------

_LABELS = (
    r"(?:final\s+)?"
    r"(?:answer|verdict|choice|output|decision|preference|winner|better\s+(?:answer|response|output))"
)
_NOUNS = r"(?:answer|response|output|option|candidate|assistant)"
_BETTER = r"(?:better|best|preferred|superior|more\s+accurate|more\s+helpful)"
_OPEN = r"[\s\(\[\*\"'`]*"  # decoration allowed before a choice: spaces, brackets, bold, quotes


def parse_choice(
    text: str, choices: tuple[str, ...] = ("A", "B"), *, case_sensitive: bool = True
) -> str:
    """The one choice the reply picks, in three strict forms tried in order.

    1. the whole reply is the choice, perhaps decorated: "A", "(B)", "**A**.", "Response B.";
    2. labelled lines: "Answer: A", "Final verdict: (B)"; all such lines must agree;
    3. verdict sentences: "Response A is better", "The better answer is B", "I prefer Output (A)";
       all such sentences must agree.
    Single-letter choices match case-sensitively by default, so the article "a" is never "A".
    """
    _require_text(text)
    if len(set(choices)) != len(choices) or not all(choices):
        raise ValueError(f"choices must be distinct non-empty strings, got {choices!r}")
    canonical = {_fold(c, case_sensitive): c for c in choices}
    names = "|".join(re.escape(c) for c in sorted(choices, key=len, reverse=True))
    # Keywords match in any case; the choices themselves only as the caller asks.
    alt = (f"((?-i:{names}))" if case_sensitive else f"({names})") + r"(?!\w)"

    bare = re.fullmatch(rf"[\W_]*(?:{_NOUNS}[\W_]*)?{alt}[\W_]*", text.strip(), re.IGNORECASE)
    if bare:
        return canonical[_fold(bare.group(1), case_sensitive)]

    labelled = [re.compile(rf"^[\W_]*{_LABELS}[\W_]*?\s*[:=]{_OPEN}{alt}", re.MULTILINE | re.IGNORECASE)]
    sentences = [
        re.compile(pattern, re.IGNORECASE)
        for pattern in (
            rf"\b{_NOUNS}{_OPEN}{alt}[\)\]\*\"'`]*\s+(?:is|was)\s+(?:the\s+)?{_BETTER}",
            rf"\b{_BETTER}\s+{_NOUNS}\s+(?:is|was)\s+(?:{_NOUNS}\s*)?{_OPEN}{alt}",
            rf"\b(?:i|we)\s+(?:would\s+)?(?:prefer|choose|pick|select)\s+"
            rf"(?:the\s+)?(?:{_NOUNS}\s*)?{_OPEN}{alt}",
        )
    ]
    for form, regexes in (("labelled verdicts", labelled), ("verdict sentences", sentences)):
        found = {
            canonical[_fold(match.group(1), case_sensitive)]
            for regex in regexes
            for match in regex.finditer(text)
        }
        if len(found) == 1:
            return found.pop()
        if len(found) > 1:
            raise InvalidReply(f"{form} disagree ({', '.join(sorted(found))})", text)
    raise InvalidReply(f"no verdict among {list(choices)} found", text)


def choice_probabilities(
    top_logprobs: dict[str, float], choices: tuple[str, ...] = ("A", "B"), *, case_sensitive: bool = True
) -> dict[str, float]:
    """Probabilities of the choices at one generated position, renormalised over the choices.

    Tokens are compared after stripping whitespace (" A" and "A" both count for "A", summed). Choices
    absent from the top-k get probability 0; if none is present the reply is invalid.
    """
    mass = {choice: 0.0 for choice in choices}
    canonical = {_fold(c, case_sensitive): c for c in choices}
    for token, logprob in top_logprobs.items():
        choice = canonical.get(_fold(token.strip(), case_sensitive))
        if choice is not None:
            mass[choice] += math.exp(logprob)
    total = sum(mass.values())
    if total <= 0.0:
        raise InvalidReply(f"none of {list(choices)} among the top tokens {sorted(top_logprobs)}")
    return {choice: p / total for choice, p in mass.items()}


# -- scores -----------------------------------------------------------------------------------------

_NUMBER = r"(-?\d+(?:\.\d+)?)"
_OUT_OF = rf"(?:\s*(?:/|out\s+of)\s*{_NUMBER})?"
_ALTERNATIVE = re.compile(r"\s*(?:or|to|and|-|–|~)\s*-?\d")  # "4 or 5", "3-4": a range, not a score


def parse_score(text: str, lo: float = 0, hi: float = 5, *, integer: bool = True) -> int | float:
    """A score in [lo, hi] from '{"score": 4}', "{'score': 4}", "Score: 4", "Score: 4/5" or "4".

    A dict in the reply is authoritative; otherwise every "score"/"rating" label must agree;
    otherwise the whole reply must be the number. With integer=True, 3.5 is invalid.
    """
    _require_text(text)
    if "{" in text:
        fields = {str(k).lower(): v for k, v in _extract_dict(text).items()}
        if "score" not in fields:
            raise InvalidReply("the reply's dict has no 'score' key", text)
        return _checked_score(_number_value(fields["score"], text), lo, hi, integer, text)

    label = rf"\b(?:score|rating)\b(?:[\s*_:=]|\bis\b|\bof\b)*{_NUMBER}{_OUT_OF}"  # "Score: 4/5"
    labelled = list(re.finditer(label, text, re.IGNORECASE))
    if labelled:
        values = set()
        for match in labelled:
            if _ALTERNATIVE.match(text, match.end()):
                raise InvalidReply("the score is given as a range or alternatives", text)
            values.add(_with_scale(match, hi, text))
        if len(values) > 1:
            raise InvalidReply(f"several different scores {sorted(values)}", text)
        return _checked_score(values.pop(), lo, hi, integer, text)

    bare = re.fullmatch(rf"\s*{_NUMBER}{_OUT_OF}\s*\.?\s*", text)
    if bare:
        return _checked_score(_with_scale(bare, hi, text), lo, hi, integer, text)
    raise InvalidReply("no score found", text)


def parse_yes_no_score(text: str, lo: int = 0, hi: int = 5) -> YesNoScore:
    """The zero-shot-QA judge reply, a python-dict-like {'pred': 'yes', 'score': 4}."""
    _require_text(text)
    fields = {str(k).lower(): v for k, v in _extract_dict(text).items()}
    for key in ("pred", "score"):
        if key not in fields:
            raise InvalidReply(f"the reply's dict has no {key!r} key", text)
    pred = fields["pred"]
    if not isinstance(pred, str) or pred.strip().lower() not in ("yes", "no"):
        raise InvalidReply(f"'pred' must be 'yes' or 'no', got {pred!r}", text)
    score = _checked_score(_number_value(fields["score"], text), lo, hi, True, text)
    return YesNoScore(yes=pred.strip().lower() == "yes", score=int(score))


# -- helpers ----------------------------------------------------------------------------------------


def _require_text(text: str) -> None:
    if not isinstance(text, str) or not text.strip():
        raise InvalidReply("empty reply", text if isinstance(text, str) else None)


def _fold(s: str, case_sensitive: bool) -> str:
    return s if case_sensitive else s.lower()


def _excerpt(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def _extract_dict(text: str) -> dict:
    """The one dict literal in the reply (JSON or python syntax), prose around it allowed."""
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end < start:
        raise InvalidReply("no {...} dict found", text)
    literal = text[start : end + 1]
    try:
        value = json.loads(literal)
    except json.JSONDecodeError:
        try:
            value = ast.literal_eval(literal)
        except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError):
            raise InvalidReply("the {...} part is not one valid dict literal", text) from None
    if not isinstance(value, dict):
        raise InvalidReply("the {...} part is not a dict", text)
    return value


def _number_value(value: object, text: str) -> float:
    if isinstance(value, bool):
        raise InvalidReply(f"score must be a number, got {value!r}", text)
    if isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str) and re.fullmatch(rf"\s*{_NUMBER}\s*", value):
        number = float(value)
    else:
        raise InvalidReply(f"score must be a number, got {value!r}", text)
    if not math.isfinite(number):
        raise InvalidReply(f"score must be finite, got {value!r}", text)
    return number


def _with_scale(match: re.Match, hi: float, text: str) -> float:
    value, scale = match.group(1), match.group(2)
    if scale is not None and float(scale) != float(hi):
        raise InvalidReply(f"score given out of {scale}, expected out of {hi:g}", text)
    return float(value)


def _checked_score(value: float, lo: float, hi: float, integer: bool, text: str) -> int | float:
    if not lo <= value <= hi:
        raise InvalidReply(f"score {value:g} outside [{lo:g}, {hi:g}]", text)
    if integer:
        if not value.is_integer():
            raise InvalidReply(f"score {value:g} is not an integer", text)
        return int(value)
    return value
