"""The words the zoo models' text encoders read: model data, kept with the text encoder.

The procedural grammars in ``zoo/`` (the training data) import these lists and check that every word they write is
in them (tests/zoo); the models never import the data that trained them. Order matters: a word's position is its
row in the text encoder's embedding, so words are only ever appended.
"""
from __future__ import annotations

# The scene grammar's words (zoo/scenes.py): the tiny preset's vocabulary and, in this order, the first rows of
# every scene model's text encoder.
TINY_VOCAB = ["a", "an", "and", "at", "the", "on", "of", "in", "with", "small", "medium", "large", "red",
              "green", "blue", "yellow", "purple", "orange", "white", "black", "circle", "square", "triangle",
              "top", "bottom", "left", "right", "center", "middle", "background", "gradient", "striped",
              "dark", "light", "gray"]
FINE_TEXTURE_WORDS = ("pinstriped", "checkered")  # the graded grammar's two fine backgrounds
GRADED_VOCAB = TINY_VOCAB + list(FINE_TEXTURE_WORDS)  # appended: a grown text encoder keeps the old ids
GRADED_MAX_WORDS = 72  # the longest graded caption has 71 words (8 shapes, 4 at corners; tested in tests/zoo)

# The clip grammar's words (zoo/clips.py), sorted: wan-mini's text encoder rows.
VIDEO_VOCAB = ["a", "and", "appearing", "at", "background", "black", "blue", "bottom", "center", "circle", "down",
               "gradient", "gray", "green", "growing", "in", "large", "left", "medium", "moving", "on", "orange",
               "purple", "red", "right", "shrinking", "small", "square", "striped", "the", "top", "triangle",
               "turning", "up", "white", "yellow"]
