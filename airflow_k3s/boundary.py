"""The one object a task works with: the settings and the outside world, made once per task.

``Stack.load()`` reads the settings; ``stack.docker`` runs Docker and compose, ``stack.kube`` runs
kubectl with the host's kubeconfig, ``stack.api()`` is a logged-in client of the Airflow REST API
and ``stack.s3()`` one of the stack's S3. The preconditions (Docker there, a service running, the
kubeconfig written) are checked here. Every command goes through airflow_k3s.shell, so
``AIRFLOW_K3S_VERBOSE=1`` shows them all.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from airflow_k3s.airflow_api import AirflowAPI
from airflow_k3s.cluster import Kubectl
from airflow_k3s.docker import Docker
from airflow_k3s.settings import Settings


class Stack:
    """The stack of this invocation: its settings, Docker and compose, kubectl, the API, S3."""

    def __init__(self, cfg: Settings, env: Mapping[str, str] | None = None) -> None:
        self.cfg = cfg
        #: The environment the settings came from; the commands get it too (None: this process's).
        self.env = env
        self.docker = Docker(cfg, env)
        self.kube = Kubectl(cfg)
        self._api: AirflowAPI | None = None

    @classmethod
    def load(cls, environ: Mapping[str, str] | None = None) -> Stack:
        """The stack as the environment (default: this process's) and its .env describe it."""
        return cls(Settings.load(environ), None if environ is None else dict(environ))

    def use(self, cfg: Settings) -> Stack:
        """Go on with updated settings (secrets just generated), keeping the checks done."""
        self.cfg = self.docker.cfg = self.kube.cfg = cfg
        return self

    def require(self, service: str = "airflow-apiserver") -> None:
        """Docker answers and ``service`` runs; else one line saying what to do."""
        self.docker.require_running(service)  # checks Docker first

    def api(self) -> AirflowAPI:
        """A logged-in client of the running stack's API (made once)."""
        if self._api is None:
            self.require()
            password = self.cfg.secrets.get("AIRFLOW_ADMIN_PASSWORD", "")
            self._api = AirflowAPI(self.cfg.airflow_url, password)
        return self._api

    def s3(self) -> Any:
        """A boto3 client of the stack's S3, with the generated credentials."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.cfg.s3_url,
            region_name="us-east-1",
            aws_access_key_id=self.cfg.secrets["S3_ACCESS_KEY"],
            aws_secret_access_key=self.cfg.secrets["S3_SECRET_KEY"],
        )
