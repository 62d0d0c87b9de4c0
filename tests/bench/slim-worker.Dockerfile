# EXPERIMENT of the benchmark only (tests/bench/bench.py, docs/benchmarks.md), not used by the project:
# a worker image without what the demo's tasks do not need, to measure what removing it saves.
# Stage "full" removes the parts from a copy of the Airflow image; the final stage copies the slimmed
# venv onto the same base, so the removed bytes are really gone (deleting in a layer on top of the
# Airflow image would not shrink it). Build context: the repository root (only dags/ is sent).
ARG AIRFLOW_IMAGE=airflow-k3s/airflow:3.3.2
ARG BASE_IMAGE=python:3.11.14-slim-bookworm

FROM ${AIRFLOW_IMAGE} AS full
ARG SLIM_UNINSTALL=""
ARG SLIM_DELETE=""
# hadolint ignore=DL3002
USER 0
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# hadolint ignore=SC2086
RUN for path in ${SLIM_DELETE}; do rm -rf "/opt/airflow/venv/lib/python3.11/site-packages/${path}"; done \
    && /opt/airflow/venv/bin/python -m pip uninstall --yes ${SLIM_UNINSTALL}

FROM ${BASE_IMAGE}
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV AIRFLOW_HOME=/opt/airflow \
    VIRTUAL_ENV=/opt/airflow/venv \
    PATH=/opt/airflow/venv/bin:$PATH \
    PYTHONUNBUFFERED=1
RUN mkdir -p /shared && chown 50000:0 /shared && chmod 0775 /shared \
    && useradd --uid 50000 --gid 0 --home-dir /opt/airflow --no-create-home airflow \
    && mkdir -p /opt/airflow/dags /opt/airflow/logs /opt/airflow/kube /opt/airflow/auth \
    && chown 50000:0 /opt/airflow /opt/airflow/dags /opt/airflow/logs /opt/airflow/kube /opt/airflow/auth \
    && chmod 0775 /opt/airflow /opt/airflow/dags /opt/airflow/logs /opt/airflow/kube /opt/airflow/auth
COPY --from=full /usr/bin/tini /usr/bin/tini
COPY --from=full /opt/airflow/venv /opt/airflow/venv
COPY --from=full /opt/airflow-k3s /opt/airflow-k3s
USER 50000:0
WORKDIR /opt/airflow
ENTRYPOINT ["/usr/bin/tini", "--", "/opt/airflow-k3s/entrypoint.sh"]
CMD ["version"]
COPY --chown=50000:0 dags/ /opt/airflow/dags/
