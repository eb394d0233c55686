"""Output stage. Takes packed rows and the facts of a run; gives a Hub-layout dataset folder (Parquet shards,
card, charts, bundled tokenizer), and reads such folders back (validate, inspect, push).

* :mod:`~hfprep.output.layout`: the folder layout, atomic writes, shards.
* :mod:`~hfprep.output.card`: the dataset card (front matter + template).
* :mod:`~hfprep.output.plots`, :mod:`~hfprep.output.quality`: charts and the packing quality report.
* :mod:`~hfprep.output.validate`, :mod:`~hfprep.output.inspect_cmd`: check and show a prepared folder.
* :mod:`~hfprep.output.hub`: push a folder to the Hub (one config of a repo at a time).
"""
