# syntax=docker/dockerfile:1
#
# One image for every process of the mesh; the command picks which one:
#   python -m services.user | services.product | services.order | services.notification | gateway
# (CMD below starts the gateway.) Build from the repository root:
#   docker build -t shop-mesh:dev .
#
# The base is pinned by tag; pin it by digest too (python:3.11-slim-bookworm@sha256:...)
# when your registry mirror has it, for byte-for-byte reproducible builds.

# ---- builder: the runtime dependencies, in a venv ------------------------------
FROM python:3.11-slim-bookworm AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /build
COPY pyproject.toml requirements.lock ./

# Only [project.dependencies] (no dev or bench extras), every version from the lock.
# --only-binary: every runtime dependency ships manylinux wheels, so no compiler is
# needed even here, and a dependency that would need one fails the build instead of
# silently compiling. The one exception, openapi-ui-bundles (the gateway's Swagger UI
# assets), is published as an sdist only; it is pure Python and builds without a
# compiler. The venv gets no pip/setuptools: pip installs into it from outside.
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > runtime-requirements.txt \
    && python -m venv --without-pip /opt/venv \
    && python -m pip --python /opt/venv/bin/python install --no-cache-dir \
        --only-binary=:all: --no-binary=openapi-ui-bundles \
        --constraint requirements.lock --requirement runtime-requirements.txt

# ---- final: the venv and the code, nothing else -----------------------------------
FROM python:3.11-slim-bookworm

# A numeric, non-root user (Kubernetes' runAsNonRoot can check a number, not a name).
# DATA_DIR is the only writable path besides /tmp, so a read-only root filesystem works;
# in Kubernetes an emptyDir is mounted over it.
RUN groupadd --system --gid 10001 shop \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin shop \
    && install -d -o 10001 -g 10001 -m 0700 /var/lib/shop

COPY --from=builder /opt/venv /opt/venv

# The code stays owned by root: the process can read it, not change it.
# gen/ holds the generated `shop` and `buf` packages; PYTHONPATH puts it on sys.path
# beside /app, as the editable install does for development (the project itself is
# not pip-installed here, so there is one copy of the code, under /app).
WORKDIR /app
COPY services/ /app/services/
COPY gateway/ /app/gateway/
COPY gen/ /app/gen/

ENV PATH="/opt/venv/bin:$PATH" \
    PYTHONPATH=/app:/app/gen \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    DATA_DIR=/var/lib/shop \
    HOST=0.0.0.0

# Bytecode made at build time: with a read-only root filesystem (and
# PYTHONDONTWRITEBYTECODE) nothing can be cached at run time.
RUN python -m compileall -q -j 0 /app/services /app/gateway /app/gen

USER 10001:10001

# gateway 8080 (HTTP/1.1 + h2c) and its metrics 9080; services 5005x (gRPC, mutual TLS),
# their metrics 5105x and their plaintext health ports 5205x.
EXPOSE 8080 9080 50051-50054 51051-51054 52051-52054

# No HEALTHCHECK, on purpose. Kubernetes ignores it (the manifests in deploy/k8s use
# startup, readiness and liveness probes instead). And one image runs five different
# processes: the services answer grpc.health.v1 on their health port, the gateway HTTP
# /healthz, so one HEALTHCHECK line would have to guess which process it is in, and a
# check in Python costs an interpreter start and a grpc import per interval. With plain
# Docker or Compose, give each container its own check, e.g. for the gateway:
#   python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz')"
HEALTHCHECK NONE

# The processes handle SIGTERM themselves (graceful shutdown within SHUTDOWN_GRACE) and
# start no children, so python can be PID 1 without an init.
STOPSIGNAL SIGTERM
CMD ["python", "-m", "gateway"]
