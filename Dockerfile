# The gateway's image: `docker build -t llm-gateway:0.1.0 .`
# Runs as uid/gid 10001 on a read-only root filesystem: it writes only to $TMPDIR (/tmp, an
# emptyDir in deploy/). No HEALTHCHECK: Kubernetes probes /healthz and /readyz.

# Builder: a virtualenv with the gateway and exactly the dependencies uv.lock holds, no dev
# extras (all of them ship wheels), installed by uv at the version the Makefile pins; a
# pyproject.toml the lock no longer satisfies fails the build (--locked).
FROM python:3.11-slim AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 UV_NO_CACHE=1 UV_PYTHON_DOWNLOADS=never \
    UV_COMPILE_BYTECODE=1 UV_PROJECT_ENVIRONMENT=/opt/venv
RUN pip install --no-cache-dir uv==0.13.9
WORKDIR /src
COPY pyproject.toml uv.lock README.md ./
COPY gateway ./gateway
RUN uv sync --locked --no-editable

# Final: the same Python, the virtualenv only; no compiler, no pip cache, no sources.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PATH=/opt/venv/bin:$PATH
RUN groupadd --system --gid 10001 gateway \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin gateway
COPY --from=builder /opt/venv /opt/venv
USER 10001:10001
EXPOSE 8080
ENTRYPOINT ["gateway", "serve"]
CMD ["--config", "/etc/gateway/gateway.yaml"]
