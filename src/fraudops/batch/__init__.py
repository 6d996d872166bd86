"""Batch scoring: one file at a time, streamed in bounded memory, outputs committed atomically."""
