# syntax=docker/dockerfile:1
# Multi-stage: build a virtualenv with the service, copy it into a slim non-root runtime.
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /venv
# Exactly the locked versions, hash-checked (the same pins the tests ran, without the dev
# extra); this layer is rebuilt only when the lock changes. Then the service itself, adding
# nothing the lock does not list.
COPY requirements/runtime.txt ./requirements/runtime.txt
RUN /venv/bin/pip install --require-hashes -r requirements/runtime.txt
COPY pyproject.toml README.md ./
COPY app ./app
RUN /venv/bin/pip install --no-deps .

FROM python:3.11-slim AS runtime
ENV PATH=/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    ENV=production HOST=0.0.0.0 PORT=8000 DATA_DIR=/data
RUN useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin app \
    && mkdir -p /data && chown app /data
WORKDIR /app
COPY --from=build /venv /venv
COPY alembic.ini ./
COPY alembic ./alembic
COPY app ./app
USER app
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status != 200)"
CMD ["python", "-m", "app", "serve"]
