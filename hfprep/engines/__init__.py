"""Engines move data between the stages; the stages themselves (tokenize, key, pack) are shared functions.

* ``datasets`` (the default): :meth:`hfprep.pack.transform.PrepareForTrainingTransform.run` on one machine, ``num_proc``
  worker processes (see :mod:`hfprep.engines.mapreduce`).
* ``ray``: :func:`hfprep.engines.ray_engine.prepare_with_ray` on a Ray cluster (or a local one), reading Parquet /
  JSONL files in parallel on the workers. Needs the optional extra: ``pip install 'hfprep[ray]'``.

Both engines call the same ``map_batch`` and ``reduce_group`` of the transform, so they produce the same rows in
the same order (groups in ascending key order, input order inside a group).

Example:
    >>> from hfprep.engines import ENGINES
    >>> ENGINES
    ('datasets', 'ray')
"""

from __future__ import annotations

ENGINES: tuple[str, ...] = ("datasets", "ray")

__all__ = ["ENGINES"]
