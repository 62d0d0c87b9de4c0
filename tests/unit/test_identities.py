"""airflow_k3s.identities: one ServiceAccount per Airflow service that talks to the cluster, no
more than it needs, compared with Airflow's Helm chart; the manifests k3s applies."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from airflow_k3s import identities
from airflow_k3s.identities import API_SERVER, KPO, SCHEDULER, TRIGGERER
from tests.unit.test_manifests_schema import validate

#: Airflow's Helm chart (KubernetesExecutor): the scheduler's pod-launcher-role and the
#: api-server's pod-log reader, as the chart's templates/rbac files grant them.
CHART_POD_LAUNCHER = {
    "pods": {"create", "get", "list", "watch", "patch", "delete"},
    "pods/log": {"get"},
    "pods/exec": {"create", "get"},
    "events": {"list"},
}
CHART_POD_LOG_READER = {"pods": {"get", "list", "watch"}, "pods/log": {"get"}}


def rights(identity: identities.Identity) -> dict[str, set[str]]:
    return {resource: set(verbs) for resource, verbs in identity.rules}


def test_the_scheduler_and_the_api_server_get_the_helm_charts_rights_and_no_more() -> None:
    assert rights(SCHEDULER) == CHART_POD_LAUNCHER
    assert rights(API_SERVER) == CHART_POD_LOG_READER


def test_the_triggerer_reads_pods_and_may_delete_them_only() -> None:
    assert rights(TRIGGERER) == {
        "pods": {"get", "list", "watch", "delete"},
        "pods/log": {"get"},
        "events": {"list", "watch"},
    }


@pytest.mark.parametrize("identity", identities.IDENTITIES, ids=lambda i: i.name)
def test_no_identity_touches_secrets_nodes_or_anything_cluster_wide(
    identity: identities.Identity,
) -> None:
    docs = identities.manifests(identity, "team-a")
    assert {d["metadata"]["namespace"] for d in docs} == {"team-a"}
    assert not [d for d in docs if d["kind"].startswith("Cluster")], "namespaced only"
    resources = {r for r, _verbs in identity.rules}
    assert resources <= {"pods", "pods/log", "pods/exec", "events"}
    assert not identities.allowed(identity, "get", "secrets")
    assert identity.why


def test_each_service_account_has_its_token_secret_and_the_kpo_none() -> None:
    docs: list[dict[str, Any]] = list(yaml.safe_load_all(identities.render("team-a")))
    secrets = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Secret"}
    assert set(secrets) == {
        "airflow-scheduler-token",
        "airflow-apiserver-token",
        "airflow-triggerer-token",
    }
    for name, secret in secrets.items():
        assert secret["type"] == "kubernetes.io/service-account-token"
        account = secret["metadata"]["annotations"]["kubernetes.io/service-account.name"]
        assert f"{account}-token" == name
        assert "data" not in secret, "the token controller fills it: no token in a file"
    kpo = list(yaml.safe_load_all(identities.render("team-a", (KPO,))))
    assert [d["kind"] for d in kpo] == ["ServiceAccount", "Role", "RoleBinding"]
    assert kpo[2]["subjects"] == [
        {"kind": "ServiceAccount", "name": "airflow-kpo", "namespace": "team-a"}
    ]


def test_the_services_without_an_identity() -> None:
    assert {i.service for i in identities.SERVICE_IDENTITIES} == {
        "airflow-scheduler",
        "airflow-apiserver",
        "airflow-triggerer",
    }, "the dag-processor and airflow-init hold no cluster credential"


def test_pod_security_labels_and_the_refusal_read() -> None:
    assert identities.pod_security_labels("restricted") == [
        "pod-security.kubernetes.io/enforce=restricted",
        "pod-security.kubernetes.io/enforce-version=latest",
    ]
    refusal = (
        'Error from server (Forbidden): error when creating "STDIN": pods "x" is forbidden: '
        'violates PodSecurity "restricted:latest": privileged (container "base" must not set '
        "securityContext.privileged=true)"
    )
    assert identities.violations(refusal) == (
        'privileged (container "base" must not set securityContext.privileged=true)'
    )
    assert identities.violations('Error from server (NotFound): namespaces "x" not found') == ""


def test_the_rendered_identities_are_valid_kubernetes_objects() -> None:
    for doc in yaml.safe_load_all(identities.render("default", identities.IDENTITIES)):
        validate(doc)
