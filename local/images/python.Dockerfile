# IMAGES=local only: stands in for the pinned python:3.11 slim image (no registry reachable).
# Debian bookworm's own python3 (3.11) on the debootstrap base that `invoke images` imports;
# python-is-python3 gives it `python`, as the upstream image has.
ARG DEBIAN_IMAGE=airflow-k3s/debian:bookworm-local
FROM ${DEBIAN_IMAGE}
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv python-is-python3 ca-certificates \
    && apt-get clean && rm -rf /var/lib/apt/lists/*
