# fraudops scoring endpoint as a SageMaker-compatible container.
#
# UNTESTED: no Docker engine runs where fraudops is developed; this file has never been built. Keep it minimal.
#
# The SageMaker contract: the container is started as `docker run <image> serve`, must answer GET /ping
# (200 when ready) and POST /invocations on port 8080. ENTRYPOINT + CMD below make that `fraudops serve`.
#
#   docker build -t fraudops .
#   docker run -p 8080:8080 \
#     -e FRAUDOPS_REGISTRY__TRACKING_URI=http://mlflow:5000 \
#     -e FRAUDOPS_SERVE__WORKERS=2 -e FRAUDOPS_SERVE__API_KEY=... fraudops
#
# The model is not baked in: each worker loads models:/<registry.model_name>@champion from the MLflow
# registry at start and follows the alias (registry.tracking_uri must be reachable from the container, and
# the artifact store too, e.g. S3 credentials from the instance role). Settings come from the workspace's
# fraudops.yaml (created with defaults below; mount your own over it) and FRAUDOPS_* variables.
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
    FRAUDOPS_WORKSPACE=/opt/ml/fraudops \
    FRAUDOPS_SERVE__HOST=0.0.0.0 \
    FRAUDOPS_SERVE__PORT=8080
RUN fraudops init /opt/ml/fraudops

EXPOSE 8080
ENTRYPOINT ["fraudops"]
CMD ["serve"]
