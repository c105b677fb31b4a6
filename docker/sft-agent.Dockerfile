# syntax=docker/dockerfile:1
# The SFT agent image: watches /data-egress and pushes files over mutual TLS.
#
#   docker build -f docker/sft-agent.Dockerfile -t data-egress/sft-agent .   (context: repo root)
#
# The entrypoint assembles the client certificate, key and CA bundle (from
# SFT_CLIENT_CERT_PEM / SFT_CLIENT_KEY_PEM / SFT_CA_BUNDLE_PEM or the matching *_FILE
# paths) into /run/sft-agent/tls with mode 0600, then execs `sft-agent run`.
# Runs as uid 10001; read-only root friendly (/tmp, /run/sft-agent, /data-egress are volumes).
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
    SFT_AGENT_CONFIG=/etc/sft-agent/config.yaml \
    SFT_TLS_DIR=/run/sft-agent/tls \
    SFT_AGENT_METRICS_PORT=9091
COPY docker/healthcheck.py docker/sft-agent-entrypoint.sh /usr/local/bin/
RUN groupadd --system --gid 10001 egress \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin egress \
 && chmod 0755 /usr/local/bin/healthcheck.py /usr/local/bin/sft-agent-entrypoint.sh \
 && install -d -o 10001 -g 10001 -m 0750 /data-egress /certs \
 && install -d -o 10001 -g 10001 -m 0700 /run/sft-agent \
 && install -d -m 0755 /etc/sft-agent
COPY --from=builder /opt/venv /opt/venv
USER 10001:10001
WORKDIR /tmp
VOLUME ["/tmp", "/run/sft-agent", "/data-egress"]
EXPOSE 9091
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "/usr/local/bin/healthcheck.py", "http", "/healthz", "--port-env", "SFT_AGENT_METRICS_PORT", "--port", "9091"]
ENTRYPOINT ["/usr/local/bin/sft-agent-entrypoint.sh"]
CMD []
