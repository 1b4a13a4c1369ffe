"""The toy world's words: what exists (colours, shapes, directions, walls) and how English names it.

Two vocabularies live here on purpose, side by side:
- the GENERATOR's words (small, so a tiny model with a ~1000-token BPE vocabulary learns them in
  minutes, yet with real synonyms so a model cannot answer by matching one template);
- the ORACLE's words (a superset: what models and people actually write, "ball", "box", "leftward",
  "vanishes", "crimson", ...), so the oracle reads answers the generator would never produce.
"""

from __future__ import annotations

# RGB values chosen to survive h264 yuv420 at 32 px (decoded object centres classify back to the
# right colour; checked in tests/test_toyworld_video.py): saturated, and far apart in hue or luma.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (235, 45, 45),
    "green": (40, 205, 70),
    "blue": (60, 100, 255),
    "yellow": (245, 225, 40),
    "purple": (175, 70, 235),
    "white": (240, 240, 240),
    "orange": (255, 145, 25),
    "cyan": (40, 225, 235),
    "pink": (255, 120, 200),
}
BACKGROUND = (18, 18, 24)

SHAPES = ("circle", "square", "triangle", "diamond")
DIRECTIONS = ("left", "right", "up", "down")
OPPOSITE = {"left": "right", "right": "left", "up": "down", "down": "up"}
# The wall an object moving in a direction bounces off.
WALL_OF = {"left": "left", "right": "right", "up": "top", "down": "bottom"}
WALLS = ("left", "right", "top", "bottom")
PARTS = ("start", "middle", "end")  # thirds of the video (of a clip, for clip-level text)

# ---------------------------------------------------------------- generator vocabulary
# Each list: the first entry is the canonical word and comes up most often.
GEN_SHAPE_NOUN = {
    "circle": ["circle", "circle", "ball"],
    "square": ["square", "square", "box"],
    "triangle": ["triangle"],
    "diamond": ["diamond"],
}
GEN_SHAPE_PLURAL = {"circle": "circles", "ball": "balls", "square": "squares", "box": "boxes",
                    "triangle": "triangles", "diamond": "diamonds"}
GEN_DIRECTION = {
    "left": ["to the left", "left", "to the left"],
    "right": ["to the right", "right", "to the right"],
    "up": ["up", "upward", "to the top"],
    "down": ["down", "downward", "to the bottom"],
}
# The one phrase reasons and yes/no questions use for a direction.
DIRECTION_PHRASE = {"left": "to the left", "right": "to the right", "up": "up", "down": "down"}
GEN_WALL = {"left": "left", "right": "right", "top": "top", "bottom": "bottom"}
NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]

# ---------------------------------------------------------------- oracle vocabulary
COLOUR_WORDS = {
    "red": "red", "crimson": "red", "scarlet": "red", "maroon": "red",
    "green": "green", "lime": "green",
    "blue": "blue", "navy": "blue", "azure": "blue",
    "yellow": "yellow", "gold": "yellow", "golden": "yellow",
    "purple": "purple", "violet": "purple", "magenta": "purple", "lilac": "purple",
    "white": "white",
    "orange": "orange",
    "cyan": "cyan", "turquoise": "cyan", "teal": "cyan", "aqua": "cyan",
    "pink": "pink",
    "black": "black", "brown": "brown", "grey": "grey", "gray": "grey",
}
SHAPE_WORDS = {
    "circle": "circle", "circles": "circle", "ball": "circle", "balls": "circle", "disc": "circle",
    "discs": "circle", "disk": "circle", "disks": "circle", "dot": "circle", "dots": "circle",
    "sphere": "circle", "spheres": "circle", "orb": "circle", "orbs": "circle", "round": "circle",
    "oval": "circle",
    "square": "square", "squares": "square", "box": "square", "boxes": "square", "block": "square",
    "blocks": "square", "cube": "square", "cubes": "square", "rectangle": "square",
    "rectangles": "square",
    "triangle": "triangle", "triangles": "triangle", "triangular": "triangle", "pyramid": "triangle",
    "diamond": "diamond", "diamonds": "diamond", "rhombus": "diamond", "rhombuses": "diamond",
    "lozenge": "diamond",
}
PLURAL_NOUNS = {w for w in SHAPE_WORDS if w.endswith("s") and w not in ("rhombus",)} | {
    "objects", "shapes", "things", "items", "figures",
}
# Nouns that name an object without saying its shape.
GENERIC_NOUNS = {"object", "objects", "shape", "shapes", "thing", "things", "item", "items",
                 "figure", "figures", "one", "ones"}
# Nouns that are never objects of the world: a clause about them has no object subject.
NON_OBJECT_NOUNS = {"background", "screen", "video", "scene", "frame", "picture", "image", "clip",
                    "camera", "wall", "edge", "side", "border", "corner", "view"}
SIZE_WORDS = {"big": "big", "large": "big", "huge": "big", "bigger": "big", "larger": "big",
              "small": "small", "little": "small", "tiny": "small", "smaller": "small"}
NUMBER_VALUES = {w: i for i, w in enumerate(NUMBER_WORDS)} | {
    "single": 1, "once": 1, "pair": 2, "couple": 2, "twice": 2, "none": 0,
}
YES_WORDS = {"yes", "yeah", "yep", "yup", "correct", "true", "indeed", "sure", "affirmative"}
NO_WORDS = {"no", "nope", "nah", "false", "incorrect", "negative"}
