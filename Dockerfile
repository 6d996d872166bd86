# fraudops as a SageMaker container: one image for the pipeline's jobs and the real-time endpoint.
#
# UNTESTED here: no Docker engine runs where fraudops is developed, so this file has never been built.
# tests/test_aws_runtime.py checks what can be checked without one: the files each COPY names exist and
# make a buildable project, the uv pin matches the Makefile's, every FRAUDOPS_* variable is a setting, and
# ENTRYPOINT + the arguments SageMaker passes resolve to real commands, which the tests run on /opt/ml-shaped
# folders. Keep it minimal.
#
# SageMaker starts the image as `docker run <image> ARGS`; with ENTRYPOINT ["fraudops", "sagemaker"]:
#   training job     ARGS = train            → fraudops sagemaker train (hyperparameters.json, channels)
#   processing job   ARGS = process STEP …   → fraudops sagemaker process STEP (processing/workspace/)
#   endpoint         ARGS = serve            → fraudops sagemaker serve (GET /ping, POST /invocations, :8080)
# `fraudops export aws` writes the state machines that start the jobs; README "Deploy on AWS".
#
#   docker build -t fraudops .
#   docker run -p 8080:8080 -e FRAUDOPS_REGISTRY__TRACKING_URI=http://mlflow:5000 fraudops     # the endpoint
#   docker run --entrypoint fraudops fraudops --help                                          # any command
#
# The model is not baked in: the endpoint loads models:/<registry.model_name>@champion from the MLflow
# registry and follows the alias (registry.tracking_uri must be reachable from the container, and the
# artifact store too, e.g. S3 through the instance role). The endpoint's settings come from the workspace
# below (defaults; mount your own fraudops.yaml over it) and FRAUDOPS_* variables. It lives outside /opt/ml,
# which SageMaker mounts over in its jobs.
FROM python:3.11-slim

RUN apt-get update && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/*
RUN pip install --no-cache-dir uv==0.13.9

WORKDIR /opt/fraudops
COPY pyproject.toml uv.lock README.md ./
COPY src ./src
RUN uv sync --frozen --no-dev --no-editable

ENV PATH="/opt/fraudops/.venv/bin:${PATH}" \
    PYTHONUNBUFFERED=1 \
    FRAUDOPS_WORKSPACE=/opt/fraudops/workspace \
    FRAUDOPS_SERVE__HOST=0.0.0.0 \
    FRAUDOPS_SERVE__PORT=8080
RUN fraudops init /opt/fraudops/workspace

EXPOSE 8080
ENTRYPOINT ["fraudops", "sagemaker"]
CMD ["serve"]
