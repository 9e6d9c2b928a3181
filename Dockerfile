# syntax=docker/dockerfile:1
# One image for both services; the command picks which one runs:
#   docker build -t distributed-echo-system:1.0.0 .
#   docker run distributed-echo-system:1.0.0                                  # Service A (the default CMD)
#   docker run distributed-echo-system:1.0.0 'service_b.app:create_app()'     # Service B
# See the README's "Deploying" section; tests/integration/test_deploy.py runs this file's command.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- builder: a virtual environment with the pinned requirements and the project's wheel ----
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /src
# Pinned runtime requirements only (no test tools; their layer is cached until the files change),
# without `-r` includes (flattened here); the image gets a built wheel, not an editable install.
# --build-arg REQUIREMENTS=requirements-otel.txt adds OpenTelemetry tracing.
ARG REQUIREMENTS=requirements-runtime.txt
COPY requirements-runtime.txt requirements-otel.txt ./
# pipefail: a wrong REQUIREMENTS (grep cannot read it) fails the build instead of silently
# building an image without the extra packages.
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN python -m venv /opt/venv \
    && grep -hv -e '^-e' -e '^-r' requirements-runtime.txt "$REQUIREMENTS" | sort -u > /tmp/requirements-image.txt \
    && /opt/venv/bin/pip install -r /tmp/requirements-image.txt
COPY pyproject.toml README.md LICENSE ./
COPY src ./src
COPY service_a ./service_a
COPY service_b ./service_b
# --no-deps: every dependency is already installed at its pinned version; pip check proves it.
RUN /opt/venv/bin/pip wheel --no-deps --wheel-dir /tmp/wheels . \
    && /opt/venv/bin/pip install --no-deps /tmp/wheels/*.whl \
    && /opt/venv/bin/pip check

# ---- runtime: the slim base, the virtual environment, two small files, no build tools ----
FROM ${PYTHON_IMAGE} AS runtime
# Inside a container the services listen on every interface (the local default is 127.0.0.1).
# gunicorn keeps its metrics in PROMETHEUS_MULTIPROC_DIR; /tmp is the one writable place
# (an emptyDir in Kubernetes, where the root filesystem is read-only).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    SERVICE_A_HOST=0.0.0.0 \
    SERVICE_A_PORT=8080 \
    SERVICE_B_HOST=0.0.0.0 \
    SERVICE_B_PORT=8081 \
    PROMETHEUS_MULTIPROC_DIR=/tmp/metrics
RUN groupadd --system --gid 10001 echo \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin echo
COPY --from=builder /opt/venv /opt/venv
WORKDIR /app
# The layout mirrors the repository, so the same command works here and in a checkout.
COPY gunicorn.conf.py ./
COPY deploy/docker/healthcheck.py ./deploy/docker/
USER 10001:10001
EXPOSE 8080 8081
# gunicorn is PID 1 (exec form) and gets SIGTERM itself: /ready turns 503, serving goes on for
# DRAIN_DELAY_SECONDS, then in-flight requests get up to DRAIN_TIMEOUT_SECONDS to finish.
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s --start-period=15s --retries=3 \
    CMD ["python", "deploy/docker/healthcheck.py"]
ENTRYPOINT ["gunicorn", "-c", "gunicorn.conf.py"]
CMD ["service_a.app:create_app()"]
