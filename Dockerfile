# The sidecar image: `train-supervisor serve`, without torch (the workers' torch is in the
# training image; the supervisor never imports it).
#   docker build -t train-supervisor:0.1.0 .
# tests/e2e/test_install.py copies what the COPY lines below name and runs the same
# `pip install .` in a fresh virtualenv, so a file the install needs cannot be left out here.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# A fixed non-root user: a pod's securityContext (runAsUser/runAsGroup 10001) can match it, and
# the trainer container runs as the same UID to share the snapshot arenas in /dev/shm.
RUN groupadd --system --gid 10001 supervisor \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin supervisor

WORKDIR /tmp/train-supervisor
# What `pip install .` reads: the build configuration, the README (the package's description)
# and the three packages (generated gRPC code included).
COPY pyproject.toml README.md ./
COPY supervisor ./supervisor
COPY launcher ./launcher
COPY train_supervisor ./train_supervisor
# Binary wheels only (grpcio, psutil, crc32c, py-spy, ...): no compiler in the image. The kube
# extra (the official kubernetes client) posts Events on the pod (SUPERVISOR_KUBE_EVENTS).
RUN pip install --no-cache-dir --only-binary=:all: ".[kube]" \
    && rm -rf /tmp/train-supervisor
WORKDIR /

USER 10001:10001
EXPOSE 29400
ENTRYPOINT ["train-supervisor", "serve"]
