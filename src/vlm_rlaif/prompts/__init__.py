"""Versioned prompt templates, written in our own words on the paper's criteria.

A template's file name is `<name>_v<version>.txt`; results record the name and version they used, so
a changed prompt never silently mixes with old results. Placeholders are `{name}`; rendering with a
missing or unused value is an error.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from functools import cache
from pathlib import Path

_DIR = Path(__file__).parent
OPTION_LETTERS = string.ascii_uppercase  # multiple-choice options are lettered (A) (B) ...
MCQ_TEMPLATE = "eval_mcq_question"


@dataclass(frozen=True)
class PromptTemplate:
    name: str
    version: int
    text: str

    @property
    def id(self) -> str:
        return f"{self.name}_v{self.version}"

    @property
    def fields(self) -> set[str]:
        return {f for _, f, _, _ in string.Formatter().parse(self.text) if f}

    def render(self, **values: str) -> str:
        missing = self.fields - set(values)
        extra = set(values) - self.fields
        if missing or extra:
            raise KeyError(
                f"prompt {self.id}: missing {sorted(missing)}, unexpected {sorted(extra)}"
            )
        return self.text.format(**values)


@cache
def load_prompt(name: str, version: int | None = None) -> PromptTemplate:
    """The template `name` at `version` (default: the newest version shipped)."""
    versions = {}
    for path in _DIR.glob(f"{name}_v*.txt"):
        m = re.fullmatch(rf"{re.escape(name)}_v(\d+)\.txt", path.name)
        if m:
            versions[int(m.group(1))] = path
    if not versions:
        known = sorted({re.sub(r"_v\d+\.txt$", "", p.name) for p in _DIR.glob("*_v*.txt")})
        raise KeyError(f"no prompt template named {name!r}; known: {', '.join(known)}")
    v = max(versions) if version is None else version
    if v not in versions:
        raise KeyError(f"prompt {name!r} has no version {v}; shipped: {sorted(versions)}")
    return PromptTemplate(name, v, versions[v].read_text().rstrip("\n"))


def format_context(clip_descriptions: list[str]) -> str:
    """Join per-clip descriptions in temporal order with clip markers: the judge's context.

    The toy world's judge-skill examples and the feedback stage both use this, so the judge is trained
    on exactly the format it later reads.
    """
    return "\n".join(f"Clip {i}: {d.strip()}" for i, d in enumerate(clip_descriptions, start=1))


def format_mcq_question(question: str, candidates: list[str]) -> str:
    """A question with its lettered options, in the eval_mcq_question template.

    The multiple-choice benchmark asks this and the toy world's multiple-choice SFT examples are
    written with it, so the model is trained on exactly the format it is evaluated in.
    """
    options = "\n".join(f"({OPTION_LETTERS[i]}) {c}" for i, c in enumerate(candidates))
    return load_prompt(MCQ_TEMPLATE).render(question=question, options=options)
