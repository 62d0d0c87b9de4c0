# The worker image built from the user's own Airflow image ($WORKER_BASE_IMAGE): whatever that
# image runs as and starts with stays; it must carry apache-airflow-providers-cncf-kubernetes (the
# task library checks). Build context: .generated/worker-context/ (dags/, requirements.txt,
# extra-ca.crt), as for worker/Dockerfile.
ARG WORKER_BASE_IMAGE=apache/airflow:3.3.2
FROM ${WORKER_BASE_IMAGE}
COPY requirements.txt extra-ca.crt /tmp/worker/
# As the image's own user (the official image installs into the airflow user's site-packages).
RUN if [ -s /tmp/worker/requirements.txt ]; then \
        if [ -s /tmp/worker/extra-ca.crt ]; then export PIP_CERT=/tmp/worker/extra-ca.crt; fi; \
        pip install --no-cache-dir -r /tmp/worker/requirements.txt; \
    fi
COPY dags/ /opt/airflow/dags/
