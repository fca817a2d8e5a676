# syntax=docker/dockerfile:1
# One image for both roles: `factory gateway` and `factory worker` (compose.yaml picks the command).

# --- build: every dependency as a wheel (compilers only here, for platforms without binary wheels)
FROM python:3.11-slim AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# constraints.txt: the versions the tests ran against (make and CI install from it too).
COPY pyproject.toml README.md constraints.txt ./
COPY factory ./factory
COPY gateway ./gateway
COPY worker ./worker
COPY factory_cli ./factory_cli
COPY factory_client ./factory_client
RUN pip wheel --no-cache-dir --wheel-dir /wheels -c constraints.txt '.[prefabs]'

# --- run
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
COPY --from=build /wheels /wheels
COPY --from=build /src/constraints.txt /tmp/constraints.txt
RUN pip install --no-index --find-links /wheels -c /tmp/constraints.txt 'prefab-factory[prefabs]' \
    && rm -rf /wheels /tmp/constraints.txt

RUN useradd --create-home --uid 10001 factory \
    && mkdir -p /data /app \
    && chown factory:factory /data
WORKDIR /app
# The bundled prefabs; mount a folder over /app/prefabs (or set FACTORY_PREFABS) to serve others.
COPY prefabs ./prefabs

USER factory
ENV FACTORY_PREFABS=/app/prefabs \
    FACTORY_STATE_DIR=/data \
    FACTORY_HOST=0.0.0.0 \
    FACTORY_PORT=8000
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD python -c "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status != 200)"
CMD ["factory", "gateway", "--host", "0.0.0.0"]
