# syntax=docker/dockerfile:1
# One image for every Block process: the operator, the predictor sidecar, the gateway
# (scheduler) and the engine twin are entry points of the same `block` command.
#   docker build -t block:0.1.0 .
# Slim on purpose: the default dependencies only (no torch: that is the `gpu` extra, for
# profiling and estimator training, never for serving). Runs as an unprivileged user.

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
# The `block` root package and every component folder that pyproject.toml maps into it.
COPY block/ block/
COPY simulator/ simulator/
COPY predictor/ predictor/
COPY scheduler/ scheduler/
COPY estimator/ estimator/
COPY operator/ operator/
COPY profiler/ profiler/
COPY experiments/ experiments/
# Profiles and traces, package data of block.data (data/README.md: sources and licences).
COPY data/ data/
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --uid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin block
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
# The latency profiles and traces are package data of the wheel (block.data). Profiles of other
# hardware can be mounted and named with BLOCK_PROFILES_DIR, searched before the shipped ones.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 10001:10001
WORKDIR /tmp
ENTRYPOINT ["block"]
CMD ["--help"]
