"""STAND-IN for the KubernetesExecutor, used ONLY where k3s cannot run (``IMAGES=local``).

It is not the KubernetesExecutor and proves nothing about Kubernetes itself. It exists so that the
rest of the stack (scheduler, api-server, worker image, registry, Secret, shared volume, S3 logs)
can be exercised end to end on a machine that can run Docker but not k3s.

What it reproduces, with the cncf provider's own code and the project's own config:

- the worker pod: built exactly as ``AirflowKubernetesScheduler`` (provider 10.25) builds it, by
  ``PodGenerator.construct_pod`` from ``[kubernetes_executor] pod_template_file``, the worker image
  ``worker_container_repository:worker_container_tag``, the namespace, the task's ``pod_override``,
  the pod mutation hook, and the task's ``execute_workload --json-string ...`` args;
- the pod's first container run as one Docker container with Kubernetes semantics: ``command`` is
  the entrypoint and ``args`` the cmd, env from ``env`` and ``envFrom``/``secretKeyRef`` Secrets
  (read from the Secret manifests rendered for k3s, in ``$STANDIN_SECRETS_DIR/<name>.yaml``),
  ``runAsUser``/``runAsGroup``, memory/cpu limits, PVC mounts as compose named volumes
  (``$STANDIN_VOLUME_FOR_CLAIM``, e.g. ``airflow-shared=shared-data``), hostname = pod name;
- the image pull: the registry mirror of k3s's registries.yaml (``$STANDIN_REGISTRY_MIRROR``, e.g.
  ``registry:5000=127.0.0.1:5001``), ``imagePullPolicy`` (Always / IfNotPresent / Never), and the
  container is created from the pulled ``repo@sha256:...`` digest (label
  ``airflow-k3s.image-digest``);
- the outcome: exit code 0 is success, anything else failure (the last log lines are logged);
  ``delete_worker_pods`` / ``delete_worker_pods_on_failure`` decide whether finished containers are
  removed or kept for inspection, like pods.

What it does NOT reproduce: the Kubernetes API, scheduling, pod phases and watchers, init and
sidecar containers, probes, requests, fsGroup, ``$(VAR)`` expansion in args, pod DNS (containers
use Docker's DNS on the compose network), adoption of tasks after a scheduler restart (nothing is
adopted; the scheduler resets those tasks), pod log reading by the api-server while a task runs,
coordinator queues, multi-namespace mode. The translation refuses what it cannot express (other
volume kinds, configMap env, subPath) with a clear error instead of silently dropping it.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import socket
import sys
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import yaml
from airflow.executors.base_executor import BaseExecutor
from airflow.executors.workloads import ExecuteTask
from airflow.providers.cncf.kubernetes.executors.kubernetes_executor_utils import (
    get_base_pod_from_template,
)
from airflow.providers.cncf.kubernetes.kube_config import KubeConfig
from airflow.providers.cncf.kubernetes.kubernetes_helper_functions import create_unique_id
from airflow.providers.cncf.kubernetes.pod_generator import PodGenerator, workload_to_command_args
from airflow.utils.state import TaskInstanceState

if TYPE_CHECKING:
    from airflow.models.taskinstance import TaskInstance
    from airflow.models.taskinstancekey import TaskInstanceKey
    from kubernetes.client import models as k8s

log = logging.getLogger(__name__)

DOCKER_SOCKET = "/var/run/docker.sock"
DOCKER_API = "http://docker/v1.41"
AIRFLOW_K3S_DIR = "/opt/airflow-k3s"  # where the Airflow image keeps airflow_k3s.py
FAILURE_LOG_LINES = 50


class StandinError(Exception):
    """The pod cannot be run by the stand-in; the message says why."""


# --------------------------------------------------------------------------- pure translation


@dataclass(frozen=True)
class ContainerSpec:
    """The Docker container that stands in for a pod (everything but the pinned image)."""

    name: str
    image: str  # the reference to pull, after the registry mirror rewrite
    pull_policy: str  # Always | IfNotPresent | Never
    config: Mapping[str, Any]  # body of POST /containers/create, without "Image"
    volumes: tuple[str, ...] = ()  # named volumes it mounts
    warnings: tuple[str, ...] = ()  # parts of the pod the stand-in does not reproduce

    def create_body(self, pinned_image: str) -> dict[str, Any]:
        """The create body for the image as pulled (``repo@sha256:...`` or an image id)."""
        labels = {**self.config["Labels"], "airflow-k3s.image-digest": pinned_image}
        return {**self.config, "Image": pinned_image, "Labels": labels}


def parse_pairs(value: str | None) -> dict[str, str]:
    """Parse ``"a=b,c=d"`` (the STANDIN_* mapping variables)."""
    pairs: dict[str, str] = {}
    for item in (value or "").split(","):
        if not item.strip():
            continue
        key, sep, target = item.partition("=")
        if not sep or not key.strip() or not target.strip():
            raise StandinError(f"expected KEY=VALUE pairs separated by commas, got {item!r}")
        pairs[key.strip()] = target.strip()
    return pairs


def mirror_image(image: str, mirrors: Mapping[str, str]) -> str:
    """Rewrite the registry part of ``image`` as containerd does with a registries.yaml mirror."""
    first, sep, rest = image.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost") and first in mirrors:
        return f"{mirrors[first]}/{rest}"
    return image


def split_image(image: str) -> tuple[str, str]:
    """Split a reference into (repository, tag or digest); no tag means ``latest``."""
    if "@" in image:
        repo, digest = image.split("@", 1)
        return repo, digest
    repo, sep, tag = image.rpartition(":")
    if sep and "/" not in tag:
        return repo, tag
    return image, "latest"


def default_pull_policy(image: str) -> str:
    """Kubernetes' default: Always for ``latest`` or no tag, else IfNotPresent."""
    return "Always" if split_image(image)[1] == "latest" else "IfNotPresent"


def secret_names(pod: k8s.V1Pod) -> dict[str, bool]:
    """Secrets the first container reads env from: name -> optional."""
    container = pod.spec.containers[0]
    names: dict[str, bool] = {}
    for source in container.env_from or []:
        if source.secret_ref is not None:
            names[source.secret_ref.name] = bool(source.secret_ref.optional)
    for var in container.env or []:
        ref = var.value_from.secret_key_ref if var.value_from is not None else None
        if ref is not None:
            names[ref.name] = names.get(ref.name, True) and bool(ref.optional)
    return names


def _missing_secret(name: str) -> StandinError:
    return StandinError(
        f"Secret {name!r} not found: the stand-in reads it from $STANDIN_SECRETS_DIR/{name}.yaml "
        "(the manifest rendered for k3s by `invoke up`)"
    )


def _env(container: Any, secrets: Mapping[str, Mapping[str, str]]) -> list[str]:
    env: dict[str, str] = {}
    for source in container.env_from or []:  # envFrom first: env entries take precedence
        if source.config_map_ref is not None:
            raise StandinError("envFrom configMapRef is not supported by the stand-in")
        ref = source.secret_ref
        if ref is None:
            continue
        if ref.name not in secrets:
            if ref.optional:
                continue
            raise _missing_secret(ref.name)
        env.update({f"{source.prefix or ''}{k}": v for k, v in secrets[ref.name].items()})
    for var in container.env or []:
        if var.value_from is None:
            env[var.name] = var.value or ""
            continue
        ref = var.value_from.secret_key_ref
        if ref is None:
            raise StandinError(f"env {var.name}: only value and secretKeyRef are supported")
        if ref.key in secrets.get(ref.name, {}):
            env[var.name] = secrets[ref.name][ref.key]
        elif not ref.optional:
            raise (
                _missing_secret(ref.name)
                if ref.name not in secrets
                else StandinError(f"env {var.name}: Secret {ref.name!r} has no key {ref.key!r}")
            )
    return [f"{k}={v}" for k, v in env.items()]


def _mounts(
    pod: k8s.V1Pod, container: Any, volume_for_claim: Mapping[str, str], project: str
) -> list[dict[str, Any]]:
    volumes = {v.name: v for v in pod.spec.volumes or []}
    mounts: list[dict[str, Any]] = []
    for mount in container.volume_mounts or []:
        volume = volumes.get(mount.name)
        if volume is None:
            raise StandinError(f"volumeMount {mount.name!r} has no volume in the pod")
        if mount.sub_path or mount.sub_path_expr:
            raise StandinError(f"volumeMount {mount.name!r}: subPath is not supported")
        entry: dict[str, Any] = {"Type": "volume", "Target": mount.mount_path}
        if volume.persistent_volume_claim is not None:
            claim = volume.persistent_volume_claim.claim_name
            if claim not in volume_for_claim:
                raise StandinError(
                    f"no compose volume for PersistentVolumeClaim {claim!r}: "
                    "add CLAIM=VOLUME to $STANDIN_VOLUME_FOR_CLAIM"
                )
            entry["Source"] = f"{project}_{volume_for_claim[claim]}"
            read_only = mount.read_only or volume.persistent_volume_claim.read_only
        elif volume.empty_dir is not None:
            read_only = mount.read_only  # anonymous volume, removed with the container
        else:
            raise StandinError(f"volume {mount.name!r}: only persistentVolumeClaim and emptyDir")
        entry["ReadOnly"] = bool(read_only)
        mounts.append(entry)
    return mounts


def _user(pod: k8s.V1Pod, container: Any) -> str | None:
    pod_ctx, ctx = pod.spec.security_context, container.security_context

    def pick(attr: str) -> int | None:
        for source in (ctx, pod_ctx):  # the container's securityContext wins
            value = getattr(source, attr, None) if source is not None else None
            if value is not None:
                return int(value)
        return None

    uid, gid = pick("run_as_user"), pick("run_as_group")
    if uid is None:
        if gid is not None:
            raise StandinError("runAsGroup without runAsUser is not supported by the stand-in")
        return None
    return f"{uid}:{gid}" if gid is not None else str(uid)


def _limits(container: Any) -> dict[str, int]:
    from kubernetes.utils import parse_quantity

    limits = (container.resources.limits if container.resources else None) or {}
    host: dict[str, int] = {}
    if "memory" in limits:
        host["Memory"] = host["MemorySwap"] = int(parse_quantity(limits["memory"]))
    if "cpu" in limits:
        host["NanoCpus"] = int(parse_quantity(limits["cpu"]) * 1_000_000_000)
    return host


def container_spec(
    pod: k8s.V1Pod,
    *,
    secrets: Mapping[str, Mapping[str, str]],
    registry_mirrors: Mapping[str, str],
    volume_for_claim: Mapping[str, str],
    project: str,
    network: str,
) -> ContainerSpec:
    """Translate the pod's first container into a Docker container (pure: no I/O).

    ``secrets`` maps Secret names to their decoded data, ``registry_mirrors`` registry hosts to
    the host the Docker engine pulls from, ``volume_for_claim`` PVC names to compose volume keys.
    """
    container = pod.spec.containers[0]
    name = pod.metadata.name
    config: dict[str, Any] = {
        "Hostname": name[:63],
        "Env": _env(container, secrets),
        "Labels": {
            **{f"pod.label/{k}": str(v) for k, v in (pod.metadata.labels or {}).items()},
            "airflow-k3s.standin": "pod",
            "airflow-k3s.pod-name": name,
            "airflow-k3s.project": project,
        },
        "HostConfig": {
            "NetworkMode": network,
            "Mounts": _mounts(pod, container, volume_for_claim, project),
            **_limits(container),
        },
        "NetworkingConfig": {"EndpointsConfig": {network: {}}},
    }
    # Kubernetes semantics: command replaces the entrypoint *and* drops the image's cmd;
    # args alone replace the cmd and keep the image's entrypoint.
    if container.command:
        config["Entrypoint"] = list(container.command)
        config["Cmd"] = list(container.args or [])
    elif container.args:
        config["Cmd"] = list(container.args)
    if user := _user(pod, container):
        config["User"] = user
    if container.working_dir:
        config["WorkingDir"] = container.working_dir

    warnings = []
    if pod.spec.init_containers:
        warnings.append("initContainers are not run")
    if len(pod.spec.containers) > 1:
        warnings.append("only the first container is run")
    image = mirror_image(container.image, registry_mirrors)
    mounts = config["HostConfig"]["Mounts"]
    return ContainerSpec(
        name=name,
        image=image,
        pull_policy=container.image_pull_policy or default_pull_policy(container.image),
        config=config,
        volumes=tuple(m["Source"] for m in mounts if "Source" in m),
        warnings=tuple(warnings),
    )


def decode_secret_manifest(text: str) -> dict[str, str]:
    """Decode a Secret manifest as airflow_k3s.secret_manifest_env does (its own code if found)."""
    if os.path.isdir(AIRFLOW_K3S_DIR) and AIRFLOW_K3S_DIR not in sys.path:
        sys.path.append(AIRFLOW_K3S_DIR)
    try:
        from airflow_k3s import secret_manifest_env
    except ImportError:
        doc = yaml.safe_load(text) or {}
        env = {k: base64.b64decode(v).decode() for k, v in (doc.get("data") or {}).items()}
        return {**env, **{k: str(v) for k, v in (doc.get("stringData") or {}).items()}}
    return secret_manifest_env(text)


def read_secrets(
    names: Mapping[str, bool], secrets_dir: str | os.PathLike[str]
) -> dict[str, dict[str, str]]:
    """Read ``<dir>/<name>.yaml`` for each Secret; a missing required one is a clear error."""
    secrets: dict[str, dict[str, str]] = {}
    for name, optional in names.items():
        path = Path(secrets_dir, f"{name}.yaml")
        if path.is_file():
            secrets[name] = decode_secret_manifest(path.read_text())
        elif not optional:
            raise StandinError(
                f"Secret {name!r} not found: expected its manifest at {path} "
                "($STANDIN_SECRETS_DIR; rendered for k3s by `invoke up`)"
            )
    return secrets


def demux_logs(raw: bytes) -> str:
    """Docker's multiplexed stdout/stderr log stream (no TTY) as text."""
    chunks, i = [], 0
    while i + 8 <= len(raw):
        size = int.from_bytes(raw[i + 4 : i + 8], "big")
        chunks.append(raw[i + 8 : i + 8 + size])
        i += 8 + size
    return b"".join(chunks).decode(errors="replace")


# --------------------------------------------------------------------------- Docker engine API


def _error_text(response: httpx.Response) -> str:
    try:
        return str(response.json().get("message", response.text))
    except ValueError:
        return response.text


class Docker:
    """The few Docker Engine API calls the stand-in needs, over the unix socket."""

    def __init__(self, sock: str = DOCKER_SOCKET) -> None:
        self.http = httpx.Client(
            transport=httpx.HTTPTransport(uds=sock),
            base_url=DOCKER_API,
            timeout=httpx.Timeout(30.0, connect=5.0),
        )

    def __enter__(self) -> Docker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.http.close()

    def call(self, method: str, path: str, ok: Iterable[int] = (200, 201, 204), **kw: Any) -> Any:
        response = self.http.request(method, path, **kw)
        if response.status_code not in ok:
            raise StandinError(f"Docker {method} {path}: {_error_text(response)}")
        return response.json() if response.content and response.status_code != 304 else None

    def image(self, ref: str) -> dict[str, Any] | None:
        response = self.http.get(f"/images/{ref}/json")
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise StandinError(f"Docker inspect image {ref}: {_error_text(response)}")
        result: dict[str, Any] = response.json()
        return result

    def pull(self, ref: str) -> None:
        """Pull ``ref``; any error in the progress stream (the registry's text) is raised."""
        repo, tag = split_image(ref)
        params = {"fromImage": repo, "tag": tag}
        timeout = httpx.Timeout(30.0, connect=5.0, read=120.0)
        with self.http.stream("POST", "/images/create", params=params, timeout=timeout) as resp:
            if resp.status_code != 200:
                resp.read()
                raise StandinError(f"pull of {ref} failed: {_error_text(resp)}")
            for line in resp.iter_lines():
                if line.strip() and "error" in (event := json.loads(line)):
                    raise StandinError(f"pull of {ref} failed: {event['error']}")

    def ensure_image(self, ref: str, policy: str) -> str:
        """Pull per ``imagePullPolicy``; return the pinned reference (``repo@sha256:...``)."""
        info = None if policy == "Always" else self.image(ref)
        if info is None:
            if policy == "Never":
                raise StandinError(f"image {ref} is not present and imagePullPolicy is Never")
            self.pull(ref)
            info = self.image(ref)
            if info is None:
                raise StandinError(f"image {ref} is missing right after its pull")
        repo = split_image(ref)[0]
        digests = [d for d in info.get("RepoDigests") or [] if d.startswith(f"{repo}@")]
        return str(digests[0] if digests else info["Id"])

    def run(self, spec: ContainerSpec) -> str:
        """Pull, create and start the container; return its id."""
        pinned = self.ensure_image(spec.image, spec.pull_policy)
        for volume in spec.volumes:
            if self.http.get(f"/volumes/{volume}").status_code == 404:
                log.warning("Docker volume %s does not exist; Docker creates it unlabelled", volume)
        created = self.call(
            "POST", "/containers/create", params={"name": spec.name}, json=spec.create_body(pinned)
        )
        container_id = str(created["Id"])
        self.call("POST", f"/containers/{container_id}/start")
        log.info("Started container %s (%s) from %s", spec.name, container_id[:12], pinned)
        return container_id

    def logs(self, container_id: str, tail: int) -> str:
        params = {"stdout": 1, "stderr": 1, "tail": tail}
        return demux_logs(self.http.get(f"/containers/{container_id}/logs", params=params).content)

    def remove(self, container_id: str) -> None:
        self.call(
            "DELETE", f"/containers/{container_id}", ok=(204, 404), params={"v": 1, "force": 1}
        )

    def stop(self, container_id: str, timeout: int = 10) -> None:
        self.call(
            "POST",
            f"/containers/{container_id}/stop",
            ok=(204, 304, 404),
            params={"t": timeout},
            timeout=timeout + 30,
        )


# --------------------------------------------------------------------------- executor


@dataclass
class _Launch:
    pod_name: str
    future: Future[str]
    container_id: str | None = None
    revoked: bool = False


class DockerPodExecutor(BaseExecutor):  # type: ignore[misc]  # Any where airflow is absent
    """STAND-IN for the KubernetesExecutor: each task's worker pod runs as a Docker container."""

    supports_ad_hoc_ti_run: bool = True
    supports_multi_team: bool = True
    LAUNCH_THREADS = 4

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Constructed by the api-server too (no Docker there): nothing but config here.
        self.kube_config = KubeConfig(executor_conf=self.conf)
        self.parallelism = self.kube_config.parallelism
        self.scheduler_job_id = ""
        self.secrets_dir = os.environ.get("STANDIN_SECRETS_DIR", f"{AIRFLOW_K3S_DIR}/generated")
        self.registry_mirrors = parse_pairs(os.environ.get("STANDIN_REGISTRY_MIRROR"))
        self.volume_for_claim = parse_pairs(os.environ.get("STANDIN_VOLUME_FOR_CLAIM"))
        self.project = ""
        self.network = ""
        self._launches: dict[TaskInstanceKey, _Launch] = {}
        self._pool: ThreadPoolExecutor | None = None
        self._docker: Docker | None = None

    def start(self) -> None:
        self.scheduler_job_id = str(self.job_id)
        self._docker = Docker()
        me = socket.gethostname()
        try:
            own = self._docker.call("GET", f"/containers/{me}/json")
        except (StandinError, httpx.HTTPError) as e:
            raise StandinError(
                f"the stand-in executor must run in a compose container with {DOCKER_SOCKET}: {e}"
            ) from e
        self.project = own["Config"]["Labels"]["com.docker.compose.project"]
        networks = sorted(own["NetworkSettings"]["Networks"])
        default = f"{self.project}_default"
        self.network = default if default in networks else networks[0]
        self._pool = ThreadPoolExecutor(self.LAUNCH_THREADS, thread_name_prefix="standin-launch")
        self.log.warning(
            "STAND-IN executor (not Kubernetes): worker pods run as Docker containers on network "
            "%s of compose project %s",
            self.network,
            self.project,
        )

    def build_pod(self, workload: ExecuteTask) -> k8s.V1Pod:
        """The worker pod, built as AirflowKubernetesScheduler._build_pod_request builds it."""
        ti = workload.ti
        executor_config = ti.executor_config or {}
        pod_template_file = executor_config.get("pod_template_file") if executor_config else None
        base_worker_pod = get_base_pod_from_template(pod_template_file, self.kube_config)
        return PodGenerator.construct_pod(
            # as the provider passes it (str | None in KubeConfig's annotations)
            namespace=self.kube_config.kube_namespace,  # type: ignore[arg-type]
            scheduler_job_id=self.scheduler_job_id,
            pod_id=create_unique_id(ti.dag_id, ti.task_id),
            dag_id=ti.dag_id,
            task_id=ti.task_id,
            kube_image=self.kube_config.kube_image,
            try_number=ti.try_number,
            map_index=ti.map_index,
            date=None,
            run_id=ti.run_id,
            args=list(workload_to_command_args(workload)),
            pod_override_object=PodGenerator.from_obj(executor_config),
            base_worker_pod=base_worker_pod,
            with_mutation_hook=True,
        )

    def spec_for(self, pod: k8s.V1Pod) -> ContainerSpec:
        return container_spec(
            pod,
            secrets=read_secrets(secret_names(pod), self.secrets_dir),
            registry_mirrors=self.registry_mirrors,
            volume_for_claim=self.volume_for_claim,
            project=self.project,
            network=self.network,
        )

    def _process_workloads(self, workloads: Sequence[Any]) -> None:
        assert self._pool is not None, "start() was not called"
        for workload in workloads:
            if not isinstance(workload, ExecuteTask):
                raise RuntimeError(f"{type(self).__name__} cannot run {type(workload).__name__}")
            key = workload.ti.key
            del self.queued_tasks[key]
            self.running.add(key)
            try:
                pod = self.build_pod(workload)
                spec = self.spec_for(pod)
            except Exception as e:
                self.log.error("Cannot build the worker pod of %s: %s", key, e)
                self.fail(key, info=str(e))
                continue
            for warning in spec.warnings:
                self.log.warning("Pod %s: %s (stand-in)", spec.name, warning)
            self.log.info("Launching pod %s for %s as a Docker container", spec.name, key)
            self.event_buffer[key] = (TaskInstanceState.QUEUED, self.scheduler_job_id)
            self._launches[key] = _Launch(spec.name, self._pool.submit(self._run, spec))

    @staticmethod
    def _run(spec: ContainerSpec) -> str:
        with Docker() as docker:
            return docker.run(spec)

    def sync(self) -> None:
        assert self._docker is not None, "start() was not called"
        for key, launch in list(self._launches.items()):
            if not launch.future.done():
                continue
            if launch.container_id is None:
                error = launch.future.exception()
                if error is not None:
                    del self._launches[key]
                    if not launch.revoked:
                        self.log.error(
                            "Pod %s for %s failed to start: %s", launch.pod_name, key, error
                        )
                        self.fail(key, info=str(error))
                    continue
                launch.container_id = launch.future.result()
            if launch.revoked:
                self._finish(key, launch, remove=True)
                continue
            try:
                info = self._docker.call(
                    "GET", f"/containers/{launch.container_id}/json", ok=(200, 404)
                )
            except (StandinError, httpx.HTTPError) as e:
                self.log.warning("Cannot inspect container of pod %s: %s", launch.pod_name, e)
                continue
            if info is None:
                self.log.error("Container of pod %s vanished", launch.pod_name)
                del self._launches[key]
                self.fail(key, info="container vanished")
                continue
            state = info["State"]
            if state["Status"] not in ("exited", "dead"):
                continue
            if state["ExitCode"] == 0:
                self.log.info("Pod %s for %s succeeded", launch.pod_name, key)
                self.success(key)
                self._finish(key, launch, remove=self.kube_config.delete_worker_pods)
            else:
                tail = self._docker.logs(launch.container_id, FAILURE_LOG_LINES)
                self.log.error(
                    "Pod %s for %s failed: exit code %s%s. Last log lines:\n%s",
                    launch.pod_name,
                    key,
                    state["ExitCode"],
                    " (OOMKilled)" if state.get("OOMKilled") else "",
                    tail,
                )
                self.fail(key, info=f"exit code {state['ExitCode']}")
                self._finish(
                    key,
                    launch,
                    remove=self.kube_config.delete_worker_pods
                    and self.kube_config.delete_worker_pods_on_failure,
                )

    def _finish(self, key: TaskInstanceKey, launch: _Launch, *, remove: bool) -> None:
        del self._launches[key]
        if remove and launch.container_id and self._docker is not None:
            try:
                self._docker.remove(launch.container_id)
            except (StandinError, httpx.HTTPError) as e:
                self.log.warning("Cannot remove container of pod %s: %s", launch.pod_name, e)
        elif launch.container_id:
            self.log.info("Keeping container %s (delete_worker_pods is off)", launch.pod_name)

    def revoke_task(self, *, ti: TaskInstance) -> None:
        """Forget the task and remove its container (once launched), like a deleted pod."""
        key = ti.key
        self.running.discard(key)
        self.queued_tasks.pop(key, None)
        launch = self._launches.get(key)
        if launch is None:
            return
        launch.revoked = True  # sync() removes the container once its launch has ended
        if launch.future.cancel():
            del self._launches[key]

    def terminate(self) -> None:
        self._stop_all()

    def end(self) -> None:
        """Stop what this executor started: no container outlives the scheduler unattended."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        self._stop_all()
        if self._docker is not None:
            self._docker.http.close()
            self._docker = None

    def _stop_all(self) -> None:
        if self._docker is None:
            return
        for key, launch in list(self._launches.items()):
            if not launch.future.done() or launch.future.exception() is not None:
                continue
            container_id = launch.future.result()
            self.log.warning("Stopping container of pod %s (%s)", launch.pod_name, key)
            try:
                self._docker.stop(container_id)
                if self.kube_config.delete_worker_pods:
                    self._docker.remove(container_id)
            except (StandinError, httpx.HTTPError) as e:
                self.log.warning("Cannot stop container of pod %s: %s", launch.pod_name, e)
        self._launches.clear()
