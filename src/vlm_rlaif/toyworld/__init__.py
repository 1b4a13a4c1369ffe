"""The toy world: procedural videos of coloured shapes with exact ground truth, their texts, and
an oracle that checks any free-text answer against the truth.

It is the project's embedded default: `vlm-rlaif demo` runs the whole RLAIF loop on it with tiny
models trained from scratch, and the oracle measures what RLAIF changed.

    cfg = ToyWorldConfig(seed=0)
    generate(cfg, "toy", n_videos=2000)          # videos/, truth/, sft/, rl/, feedback/, eval/
    verdict = Oracle().check_record("toy", record, "The red square moves left.")

Modules: config (ToyWorldConfig), world (sampling the truth), render (frames), describe (facts and
the English grammar), questions (question types with reference and wrong answers), corrupt (wrong
long answers), dataset (files on disk), normalise, parse and oracle (reading and checking answers),
lexicon (the words of both sides).

Why clip-level descriptions know more than the whole video (the paper's point, made measurable).
The model sees a video as pooled visual tokens: T temporal tokens (each frame's patch features
averaged over its P positions) followed by P spatial tokens (each position's features averaged over
the T frames). With 24 frames of 32 px and 16 patch positions that is 24 + 16 tokens, and:
- spatial tokens have no order at all (a mean over frames is the same in any frame order), and an
  object seen in 4 of 24 frames, or a colour shown for 3 frames, is 1/6 or 1/8 of their average;
  a moving object is smeared along its whole path, so its direction is not in them;
- temporal tokens keep order but average each frame over all positions: what is where, and which
  of two red objects turned blue, survives only if the tower has already bound colour, shape and
  place into every patch before the average.
A clip of 8 frames is pooled over 8 frames, not 24: a brief object or colour flash is 3/8 or more
of the spatial average, a path is a third as long, fewer events compete for the same tokens, and the
clip's index tells when things happened ("Clip 2: ... turns blue") even if the pooled clip does not.
The difficulty knobs aim at exactly these losses: order of events (order_gap, event_order and when
questions), brief events (brief_object_prob, brief_colour_prob, brief_min/max_frames), and which
object did what when objects share a colour or a shape (shared_attribute_prob, which_object
questions). A judge given the clip descriptions as context can read the facts the pooled video lost;
the judge-skill examples teach it to compare answers against that context (and, for the paper's
no-context ablation, to judge without it).
"""

from vlm_rlaif.toyworld.config import ToyWorldConfig
from vlm_rlaif.toyworld.dataset import FILES, SPLITS, generate, make_records, split_of
from vlm_rlaif.toyworld.oracle import FactVerdict, Oracle, Verdict
from vlm_rlaif.toyworld.render import render
from vlm_rlaif.toyworld.world import Event, ObjectTruth, Truth, sample_truth

__all__ = [
    "FILES",
    "SPLITS",
    "Event",
    "FactVerdict",
    "ObjectTruth",
    "Oracle",
    "ToyWorldConfig",
    "Truth",
    "Verdict",
    "generate",
    "make_records",
    "render",
    "sample_truth",
    "split_of",
]
