# IMAGES=local only: a STAND-IN for mockserver/mockserver (MockServer cannot be installed here).
# Python stdlib only: serves the expectations file on port 1080 (see mockserver_standin.py).
ARG PYTHON_IMAGE=airflow-k3s/python:3.11-local
FROM ${PYTHON_IMAGE}
RUN useradd --system --uid 10001 --user-group --no-create-home --home-dir /nonexistent standin
COPY mockserver_standin.py /opt/standin/mockserver_standin.py
ENV PYTHONUNBUFFERED=1 \
    MOCKSERVER_SERVER_PORT=1080
USER 10001:10001
EXPOSE 1080
ENTRYPOINT ["python3", "/opt/standin/mockserver_standin.py"]
