"""Engines move data; the stages' work is the transform's own functions. An engine takes a transform and a source
and gives the transform's output rows; it uses only the transform's engine interface, defined by
:class:`~hfprep.engines.mapreduce.MapReduceTransformBase`: ``map_batch`` / ``map_features``, ``reduce_group``
(and the tail hooks), ``group_bytes``, ``check_input_columns`` and ``guard_backend``.

* ``datasets`` (the default): :mod:`~hfprep.engines.mapreduce`, the map-reduce on ``datasets.Dataset.map`` with
  ``num_proc`` worker processes.
* ``streaming``: :mod:`~hfprep.engines.streaming`, batches of an iterable source, spilled to disk by key.
* ``ray``: :mod:`~hfprep.engines.ray_engine` on a Ray cluster (or a local one), reading Parquet / JSONL files in
  parallel on the workers. Needs the optional extra: ``pip install 'hfprep[ray]'``.

All engines call the same functions of the transform, so they produce the same rows in the same order (groups in
ascending key order, input order inside a group).
"""
