"""Example: one task's pod, changed with ``executor_config={"pod_override": ...}``.

The KubernetesExecutor builds every worker pod from the pod template (airflow/pod_template.yaml);
a task's ``pod_override`` is merged over it (cncf provider: ``PodGenerator.reconcile_pods``), the
way the provider documents it. The container to change is named ``base``.

- ``sized``: its own resources (requests and limits) and labels.
- ``scratch``: an extra volume (emptyDir) and a mount of it, next to the template's shared volume.
- ``other_image``: a different image for this task only. It must hold the DAG files too (the
  worker loads the DAG to run the task): here a variant of the worker image that the e2e tier
  builds and pushes as ``registry:5000/airflow-worker:alt`` (README, "Using it").

Each task returns what it saw inside its pod, so a test (or you, in the UI's XCom tab) can check it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from airflow.sdk import dag, task
from kubernetes.client import models as k8s

ALT_IMAGE = "registry:5000/airflow-worker:alt"
MARKER = "/opt/airflow/IMAGE_VARIANT"

SIZED = k8s.V1Pod(
    metadata=k8s.V1ObjectMeta(labels={"airflow-k3s/example": "sized"}),
    spec=k8s.V1PodSpec(
        containers=[
            k8s.V1Container(
                name="base",
                resources=k8s.V1ResourceRequirements(
                    requests={"cpu": "50m", "memory": "200Mi"},
                    limits={"memory": "700Mi"},
                ),
            )
        ]
    ),
)
SCRATCH = k8s.V1Pod(
    spec=k8s.V1PodSpec(
        containers=[
            k8s.V1Container(
                name="base",
                volume_mounts=[k8s.V1VolumeMount(name="scratch", mount_path="/scratch")],
            )
        ],
        volumes=[k8s.V1Volume(name="scratch", empty_dir=k8s.V1EmptyDirVolumeSource())],
    )
)
OTHER_IMAGE = k8s.V1Pod(
    spec=k8s.V1PodSpec(containers=[k8s.V1Container(name="base", image=ALT_IMAGE)])
)


def _cgroup_memory_limit() -> int:
    """The memory limit of this container's cgroup (v1 or v2), in bytes."""
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        if os.path.exists(path):
            text = Path(path).read_text().strip()
            return -1 if text == "max" else int(text)
    return -1


@task(executor_config={"pod_override": SIZED})
def sized() -> dict[str, Any]:
    """Report the memory limit the pod got."""
    return {"memory_limit": _cgroup_memory_limit(), "pod": os.environ.get("HOSTNAME", "")}


@task(executor_config={"pod_override": SCRATCH})
def scratch() -> dict[str, Any]:
    """Write into the extra volume and read it back; the shared volume is still there."""
    path = Path("/scratch/hello.txt")
    path.write_text("written in the scratch volume\n")
    return {"scratch": path.read_text().strip(), "shared_mounted": os.path.isdir("/shared")}


@task(executor_config={"pod_override": OTHER_IMAGE})
def other_image() -> dict[str, Any]:
    """Say which image variant this pod runs."""
    marker = Path(MARKER)
    return {"variant": marker.read_text().strip() if marker.exists() else "none"}


@dag(
    dag_id="example_pod_override",
    schedule=None,
    catchup=False,
    doc_md=__doc__,
    tags=["example", "kubernetes"],
)
def example_pod_override() -> None:
    sized()
    scratch()
    other_image()


example_pod_override()
