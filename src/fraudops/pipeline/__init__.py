"""The pipeline: the declared graph, the executor, its history, the retraining trigger and reset."""
