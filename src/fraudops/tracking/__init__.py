"""MLflow tracking and the model registry: the one place fraudops talks to MLflow's stores."""
