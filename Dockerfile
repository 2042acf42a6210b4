# syntax=docker/dockerfile:1
#
# One image for the sidecar (`prewarmer run`, the default command) and the local OpenFaaS-compatible gateway
# (`prewarmer gateway`, with the sample functions in /app/functions). The `load` target adds Locust for the
# compose demo's load generator.
#
#   docker build -t prewarmer:0.1.0 .
#   docker build --target load -t prewarmer-load:0.1.0 .
#
# The base image is pinned by tag. For builds that cannot change under you, pin it by digest as well: resolve the
# digest once and write it into both FROM lines as python:3.11.14-slim-bookworm@sha256:<digest>:
#   docker buildx imagetools inspect python:3.11.14-slim-bookworm --format '{{json .Manifest.Digest}}'
# (or `docker pull python:3.11.14-slim-bookworm` and read the "Digest:" line).

# --- build: a virtualenv with the package and its dependencies ------------------------------------------------
FROM python:3.11.14-slim-bookworm AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

# CPU-only PyTorch from PyTorch's own index, first and on its own layer: the PyPI wheel brings gigabytes of CUDA
# libraries that nothing here uses. Same version as pyproject.toml pins, so `pip install .` below keeps it.
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu

WORKDIR /src
# pyproject.toml names README.md as the package's long description: the build needs it.
COPY pyproject.toml README.md ./
COPY prewarmer ./prewarmer
# A regular (not editable) install: /src is not copied into the runtime image. pip compiles the .pyc files here,
# so the runtime's read-only root filesystem costs nothing at import.
RUN pip install .

# --- app: what the sidecar, the gateway and the load generator share -------------------------------------------
FROM python:3.11.14-slim-bookworm AS app

# A fixed numeric UID/GID: Kubernetes can only verify runAsNonRoot for a numeric USER, and the manifests' pod
# securityContext (runAsUser: 10001) names the same one. /var/secrets belongs to that user so that a fresh named
# volume mounted there (the compose demo's generated gateway credentials) is writable by it; in Kubernetes a
# Secret is mounted over it.
RUN groupadd --system --gid 10001 prewarmer \
 && useradd --system --uid 10001 --gid 10001 --home-dir /app --no-create-home --shell /usr/sbin/nologin prewarmer \
 && install -d -o 10001 -g 10001 -m 0750 /var/secrets

COPY --from=build /opt/venv /opt/venv

WORKDIR /app
COPY functions ./functions

# /tmp is the only place written at run time (an emptyDir in Kubernetes, where the root filesystem is read-only):
# numba's and matplotlib's caches and HOME go there.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    NUMBA_CACHE_DIR=/tmp/numba \
    MPLCONFIGDIR=/tmp/matplotlib

USER 10001:10001

# --- load: Locust and load/locustfile.py, the compose demo's load generator (`--target load`) ------------------
FROM app AS load

USER root
RUN pip install --no-cache-dir --disable-pip-version-check locust==2.47.0
COPY load ./load
USER 10001:10001

# Locust's web UI and the port its workers connect to on the master.
EXPOSE 8089 5557
ENTRYPOINT ["locust"]
CMD ["-f", "load/locustfile.py"]

# --- runtime: the sidecar and the gateway; the last stage, so the one a plain `docker build .` produces ---------
FROM app AS runtime

USER 10001:10001

# 9464: the sidecar's /metrics, /healthz, /readyz (--metrics-port). 8080: the gateway (--port).
EXPOSE 9464 8080

# No HEALTHCHECK here: the two commands answer on different ports; docker-compose.yml and the Kubernetes
# manifests each probe the right one.
ENTRYPOINT ["prewarmer"]
CMD ["run"]
