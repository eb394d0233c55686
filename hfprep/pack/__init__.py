"""Packing stage. Takes tokenized documents; gives packed rows of ``seq_len`` tokens and
:class:`~hfprep.pack.packers.PackStats`.

* :mod:`~hfprep.pack.keys`: document keys (``array_hash(input_ids) % num_reduce_chunks``).
* :mod:`~hfprep.pack.packers`: ``dense`` and ``no_incomplete``, the stats, the seed's row functions.
* :mod:`~hfprep.pack.bfd`: best-fit-decreasing packing with its overflow policies.
* :mod:`~hfprep.pack.transform`: ``PrepareForTrainingTransform`` (tokenize -> key -> pack), which an engine runs.
"""

from . import bfd  # noqa: F401  (registers "bfd" in packers.PACKERS)
