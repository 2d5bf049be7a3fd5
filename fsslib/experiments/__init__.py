"""Named experiments and the ``reproduce`` runner."""
