# syntax=docker/dockerfile:1
#
# The gateway as a container: multi-stage (build a virtualenv, copy only it), python:3.11-slim, non-root.
#
#   docker build -t gateway .
#   docker run -p 8080:8080 \
#     -v "$PWD/config.yaml:/etc/gateway/config.yaml:ro" \
#     -v gateway-data:/var/lib/gateway \
#     -e GATEWAY_SECRET="$(openssl rand -hex 32)" \
#     -e GATEWAY_UPSTREAM__URL=http://api.internal:9000 \
#     gateway
#   docker run --rm -v gateway-data:/var/lib/gateway -e GATEWAY_SECRET=... gateway \
#     keys create --name ci --permissions servers:read --config /etc/gateway/config.yaml
#
# Configuration: /etc/gateway/config.yaml (the repository's commented config.yaml is baked in as the default;
# mount your own over it), then GATEWAY_* variables, which win over the file. The image sets the ones a
# container needs: listen on 0.0.0.0:8080 and keep the SQLite store in the /var/lib/gateway volume.
# The server secret: GATEWAY_SECRET (or secret_file pointing at a mounted secret); without it the gateway
# creates /var/lib/gateway/gateway.secret on first start, so back the volume up.
#
# This file is linted by hadolint in the test suite (tests/test_dockerfile.py); building it needs a Docker
# engine, which the test environment does not have.

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python -m venv /opt/gateway
# Dependencies first, so a code change does not reinstall them: install the package's dependencies from
# pyproject.toml with a stub package, then the real package on top; versions from constraints.txt, the tested set.
COPY pyproject.toml README.md constraints.txt ./
RUN mkdir gateway && touch gateway/__init__.py \
    && /opt/gateway/bin/pip install --no-cache-dir -c constraints.txt . \
    && rm -rf gateway
COPY gateway ./gateway
RUN /opt/gateway/bin/pip install --no-cache-dir --no-deps --force-reinstall . \
    && /opt/gateway/bin/gateway --version

FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="gateway" \
      org.opencontainers.image.description="API-key authentication gateway" \
      org.opencontainers.image.licenses="Apache-2.0"
# A fixed numeric uid/gid, so Kubernetes can verify runAsNonRoot and volumes can be chowned to it.
RUN groupadd --system --gid 10001 gateway \
    && useradd --system --uid 10001 --gid gateway --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin gateway \
    && mkdir -p /etc/gateway /var/lib/gateway \
    && chown gateway:gateway /var/lib/gateway
COPY --from=build /opt/gateway /opt/gateway
COPY config.yaml /etc/gateway/config.yaml
COPY policies /etc/gateway/policies
ENV PATH=/opt/gateway/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    GATEWAY_LISTEN__HOST=0.0.0.0 \
    GATEWAY_LISTEN__PORT=8080 \
    GATEWAY_STORE__URL=sqlite:////var/lib/gateway/keys.db
WORKDIR /var/lib/gateway
USER 10001:10001
EXPOSE 8080
VOLUME ["/var/lib/gateway"]
# Liveness via /healthz with the interpreter already in the image (no curl): the port and path follow the
# same GATEWAY_* variables the gateway reads.
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; port = os.environ.get('GATEWAY_LISTEN__PORT', '8080'); path = os.environ.get('GATEWAY_OPS__HEALTHZ_PATH', '/healthz'); sys.exit(0 if urllib.request.urlopen(f'http://127.0.0.1:{port}{path}', timeout=4).status == 200 else 1)"]
ENTRYPOINT ["gateway"]
CMD ["serve", "--config", "/etc/gateway/config.yaml"]
