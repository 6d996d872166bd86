"""Where work runs: this process (``compute.engine: local``) or a Dask cluster (``dask``).

The one package that talks to Dask. A command opens a :func:`session` for its whole run; stages ask
:func:`current` for the active :class:`Engine` and hand it plain functions of polars frames (features per
customer/terminal partition, batch files, drift columns), never Dask objects.
"""

from fraudops.compute.cluster import Engine, attach, current, local_client, local_cluster, session

__all__ = ["Engine", "attach", "current", "local_client", "local_cluster", "session"]
