"""Monitoring: drift and performance of the champion on data it never saw, the decision, the report."""
