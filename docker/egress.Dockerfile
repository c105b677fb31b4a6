# syntax=docker/dockerfile:1
# The egress worker image (`egress run`); also runs `egress local bootstrap` and the
# operator commands (`egress routes …`, `egress dlq …`).
#
#   docker build -f docker/egress.Dockerfile -t data-egress/egress .     (context: repo root)
#
# Runs as uid 10001 and writes nothing to the root file system: /tmp and /data-egress
# are volumes, so `--read-only` (ECS readonlyRootFilesystem) works.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- builder: a wheel of this repository (setup.cfg), installed into a venv ----------
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
# The package metadata and sources only (.dockerignore keeps the rest out of the context).
COPY setup.cfg pyproject.toml README.md* ./
COPY egress/ egress/
COPY sft_agent/ sft_agent/
RUN python -m pip wheel --no-deps --wheel-dir /wheels . \
 && python -m venv /opt/venv \
 && /opt/venv/bin/pip install /wheels/data_egress-*.whl \
 && /opt/venv/bin/python -m compileall -q /opt/venv

# ---- runtime ---------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    EGRESS_SFT_ROOT=/data-egress \
    EGRESS_METRICS_PORT=9090 \
    EGRESS_LOG_FORMAT=json
COPY docker/healthcheck.py /usr/local/bin/
RUN groupadd --system --gid 10001 egress \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin egress \
 && chmod 0755 /usr/local/bin/healthcheck.py \
 && install -d -o 10001 -g 10001 -m 0750 /data-egress /etc/data-egress
COPY --from=builder /opt/venv /opt/venv
USER 10001:10001
WORKDIR /tmp
VOLUME ["/tmp", "/data-egress"]
EXPOSE 9090
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "/usr/local/bin/healthcheck.py", "http", "/healthz", "--port-env", "EGRESS_METRICS_PORT", "--port", "9090"]
ENTRYPOINT ["egress"]
CMD ["run"]
