"""``make bench``: the worker against its peers, on one machine, in one run (see run.py)."""
