# Herald image: `herald serve` by default. Migrations are a separate one-shot step:
#   docker run --rm -e HERALD_DATABASE_URL=... herald herald migrate
# Build-time choice of optional extras (comma-separated names from pyproject.toml), e.g.
#   docker build --build-arg HERALD_EXTRAS=apprise -t herald .
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS builder
ARG HERALD_EXTRAS=""
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python -m venv /opt/herald
# Dependencies first, pinned by requirements/constraints.txt, so this layer is rebuilt only
# when the pins or the declared dependencies change, not on every code change.
COPY pyproject.toml README.md ./
COPY requirements/constraints.txt requirements/constraints.txt
RUN python -c 'import sys, tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; extras = [e.strip() for e in sys.argv[1].split(",") if e.strip()]; print("\n".join(p["dependencies"] + [d for e in extras for d in p["optional-dependencies"][e]]))' "$HERALD_EXTRAS" > /tmp/requirements.txt
RUN /opt/herald/bin/pip install -c requirements/constraints.txt -r /tmp/requirements.txt
# Then Herald itself, as a regular (non-editable) install into the same venv; the wheel carries
# migrations/ as app.migrations (pyproject.toml), so `herald migrate` needs nothing else.
COPY app/ app/
COPY migrations/ migrations/
RUN /opt/herald/bin/pip install --no-deps . \
    && /opt/herald/bin/herald --version

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="Herald" \
      org.opencontainers.image.description="HTTP notification service with ordered fallback delivery" \
      org.opencontainers.image.licenses="MIT"
RUN groupadd --system --gid 10001 herald \
    && useradd --system --uid 10001 --gid herald --home-dir /app --no-create-home \
       --shell /usr/sbin/nologin herald \
    && mkdir -p /var/lib/herald /etc/herald \
    && chown herald:herald /var/lib/herald
COPY --from=builder /opt/herald /opt/herald
WORKDIR /app
# app/ and its migrations live in the venv (installed above); the example config is data,
# found through --config/HERALD_CONFIG.
COPY examples/ /app/examples/
ENV PATH=/opt/herald/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HERALD_HOST=0.0.0.0 \
    HERALD_PORT=8000 \
    HERALD_CONFIG=/etc/herald/herald.yaml \
    HERALD_DATABASE_URL=sqlite+aiosqlite:////var/lib/herald/herald.db \
    HERALD_LOG_FORMAT=json
VOLUME ["/var/lib/herald"]
USER herald
EXPOSE 8000
# slim has no curl: ask /healthz with the standard library. A non-2xx answer raises, so exits 1.
HEALTHCHECK --interval=10s --timeout=3s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('HERALD_PORT', '8000') + '/healthz', timeout=2)"]
CMD ["herald", "serve"]
