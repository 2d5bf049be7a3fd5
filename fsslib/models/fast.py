"""Fast twins: the one place where speed tricks live.

Each method file states its paper's equations as plain tensor code. Where that plain code is too
slow for the tables (a 60 x 60 x 1024 feature map, five shots, thousands of episodes), a *fast
twin* here computes the same thing another way: a matrix product instead of a broadcast sum, a
crop instead of a whole map, a gather instead of a mask. Rules:

- every twin starts with a one-line statement of what it computes and names the plain function
  or method it replaces;
- ``tests/test_fast_paths.py`` checks each twin against the plain version on random inputs
  (in float64, to rounding), and each method's whole head with ``fast_paths`` on and off;
- a method chooses between the two in one line, ``if self.config.fast_paths:``, so its file
  still reads top to bottom as the paper. ``fast_paths=True`` is the default, and every stored
  result was computed with it.
"""
from __future__ import annotations
