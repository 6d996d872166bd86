"""Data: the two dataset kinds, validation, loading from the workspace, and the transaction simulator."""
