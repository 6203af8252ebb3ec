# syntax=docker/dockerfile:1
# The orchestration service. Every setting comes from the environment at run time
# (see .env.example); nothing secret is baked into the image.
#
#   docker build -t orchestrator .
#   docker run -p 3001:3001 -e DATABASE_URL=postgresql://user:pass@host:5432/db orchestrator
#
# The same image also runs `orchestrator worker`, `orchestrator migrate` and the stand-in
# services (`python -m orchestrator.standins ...`), as docker-compose.yml does.

# ---- builder: wheels of the project and of every locked dependency -------------------------
FROM python:3.11-slim AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src
COPY pyproject.toml README.md requirements.lock ./
COPY src ./src
COPY migrations ./migrations

# The project's wheel first, exactly as scripts/check-deploy.sh builds it, then the wheels of
# its dependencies: the runtime lock (`make lock`), each file checked against its hashes, nothing
# resolved. --only-binary: the slim image has no compiler, and needs none.
RUN pip wheel --no-deps --wheel-dir /wheels . \
 && pip wheel --require-hashes --no-deps --only-binary=:all: --wheel-dir /wheels -r requirements.lock \
 && cp requirements.lock /wheels/

# ---- runtime: the wheels installed, nothing else ----------------------------------------------
FROM python:3.11-slim AS runtime

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

# A fixed non-root uid (numeric in USER, so runAsNonRoot checks can see it; a mounted volume can
# be chowned to it). Its working directory /app is writable: the default database (SQLite,
# ./orchestrator.db) lives there. Mount a volume on /app, or set DATABASE_URL to PostgreSQL, to
# keep data across containers.
RUN groupadd --system --gid 10001 app \
 && useradd --system --uid 10001 --gid app --home-dir /app --shell /usr/sbin/nologin app \
 && install -d -o app -g app -m 0755 /app

# The wheels are bind-mounted from the builder, so they never become a layer of this image.
# The locked dependencies (hashes checked again), then the project alone (--no-deps); pip check
# fails the build if the two disagree.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels --require-hashes --no-deps -r /wheels/requirements.lock \
 && pip install --no-index --no-deps /wheels/orchestrator-*.whl \
 && pip check \
 && orchestrator --help > /dev/null

WORKDIR /app
USER 10001:10001

EXPOSE 3001

# No curl in the slim image: python asks /health on the PORT the service listens on.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('PORT', '3001'), timeout=4)"]

# Migrates on start (AUTO_MIGRATE, under an advisory lock on PostgreSQL, so replicas may start
# together), serves the API and Socket.IO, and runs executions (RUNNER_ENABLED).
# SIGTERM drains for SHUTDOWN_GRACE_SECONDS: give `docker stop` a longer --time than that.
CMD ["orchestrator", "serve"]
