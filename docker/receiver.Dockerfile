# syntax=docker/dockerfile:1
# The mTLS receiver (`sft-agent receiver`): the stand-in for the receiving system in
# local runs. Checks the client certificate and the digest, writes files to /received.
#
#   docker build -f docker/receiver.Dockerfile -t data-egress/receiver .   (context: repo root)
#
# Runs as uid 10001; read-only root friendly (/tmp and /received are volumes).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- builder: a wheel of this repository (setup.cfg), installed into a venv ----------
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
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
    SFT_RECEIVER_PORT=8091
COPY docker/healthcheck.py /usr/local/bin/
RUN groupadd --system --gid 10001 egress \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin egress \
 && chmod 0755 /usr/local/bin/healthcheck.py \
 && install -d -o 10001 -g 10001 -m 0750 /received /certs
COPY --from=builder /opt/venv /opt/venv
USER 10001:10001
WORKDIR /tmp
VOLUME ["/tmp", "/received"]
EXPOSE 8091
# Every HTTPS request needs a client certificate, so the probe checks the port accepts.
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "/usr/local/bin/healthcheck.py", "tcp", "--port-env", "SFT_RECEIVER_PORT", "--port", "8091"]
ENTRYPOINT ["sft-agent", "receiver"]
CMD ["--listen", "0.0.0.0:8091", "--cert", "/certs/server.pem", "--key", "/certs/server-key.pem", "--ca", "/certs/ca.pem", "--out", "/received"]
