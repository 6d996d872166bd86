"""``python -m fraudops.cli``: the same as the ``fraudops`` command."""

from fraudops.cli import main

main()
