"""Speed benchmarks (`z1 bench ...`), one module per stage; see `common.py`."""
