"""Source stage. Takes a recipe's ``source`` section (a Hub dataset, local files or a folder of text files); gives
raw rows as a ``datasets.Dataset`` (or an ``IterableDataset`` when streaming), renamed to the columns the
strategy reads and split into train / held-out rows by the documented hash rule.

* :mod:`~hfprep.source.loading`: :class:`~hfprep.source.loading.SourceSpec`, loading, the held-out split.
"""
