"""fraudops: the card-fraud MLOps loop, local first, same code at scale."""

from importlib.metadata import version

__version__ = version("fraudops")
