# syntax=docker/dockerfile:1
# One image for every Block process: the operator, the predictor sidecar, the gateway
# (scheduler) and the engine twin are entry points of the same `block` command.
#   docker build --build-context profiles=../shared/data/profiling/compute -t block:0.1.0 .
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
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --uid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin block
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
# Latency profiles (<gpu>/<model>/mlp.csv ...) that the predictor and the engine twin simulate
# with. They live outside this repository: the `profiles` build context above names their folder.
COPY --from=profiles / /opt/block/profiles/
ENV BLOCK_PROFILES_DIR=/opt/block/profiles \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 10001:10001
WORKDIR /tmp
ENTRYPOINT ["block"]
CMD ["--help"]
