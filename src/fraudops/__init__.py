"""fraudops: the card-fraud MLOps loop, local first, same code at scale."""

import os
from importlib.metadata import version

# OpenMP threads (XGBoost, scikit-learn) that sleep rather than spin while they wait: on a busy 2-core
# machine spinning threads fight for the cores, and a 2-thread fit of a 3-week window took 112 s instead
# of 23 s (benchmarks/bench_train.py). OpenMP reads it when it loads, so it is set before any stage runs.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = version("fraudops")
