"""Test-wide settings: a wide terminal, so that messages with long temporary paths are not wrapped."""

import os

os.environ["COLUMNS"] = "250"
