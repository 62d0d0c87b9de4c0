"""airflow_k3s.airflow_objects: the settings file (connections, variables, pools), checked and
turned into the REST API's bulk payloads; the API itself is the HTTP boundary
(httpx.MockTransport)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from airflow_k3s import airflow_objects as objects
from airflow_k3s.airflow_api import AirflowAPI
from airflow_k3s.exits import ExitCode, UserError

FILE = Path("settings.yaml")


def test_the_repos_settings_file_is_valid(repo: Path, airflow_config: dict[str, str]) -> None:
    found = objects.load(repo / "airflow" / "settings.yaml", airflow_config)
    assert found.count() == "1 connections, 2 variables, 1 pools"
    assert found.connections[0]["connection_id"] == "example_http"
    assert {"key": "example_threshold", "value": "3"} in found.variables


def test_payloads_are_what_the_api_takes() -> None:
    text = """
connections:
  db: {conn_type: postgres, host: h, port: 5432, extra: {sslmode: require}}
variables:
  plain: text
  nested: {a: [1, 2]}
pools:
  heavy: {slots: 2, description: big}
"""
    found = objects.parse(text, FILE)
    assert found.connections == (
        {
            "connection_id": "db",
            "conn_type": "postgres",
            "host": "h",
            "port": 5432,
            "extra": '{"sslmode": "require"}',
        },
    )
    assert found.variables == (
        {"key": "plain", "value": "text"},
        {"key": "nested", "value": '{"a": [1, 2]}'},
    )
    assert found.pools == ({"name": "heavy", "slots": 2, "description": "big"},)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("connections: [a, b]", "connections must be a mapping of names to entries"),
        ("users: {}", "unknown section(s) users (known: connections, variables, pools)"),
        ("connections:\n  c: {host: h}", "connections.c: conn_type is required"),
        ("connections:\n  c: {conn_type: http, hots: h}", "connections.c: unknown field(s) hots"),
        (
            "connections:\n  c: {conn_type: http, port: eighty}",
            "port must be a number, not 'eighty'",
        ),
        ("pools:\n  p: {slots: many}", "pools.p: slots must be a whole number (-1: unlimited)"),
        ("pools:\n  p: 3", "pools.p: must be a mapping like {slots: 4}"),
        ("connections: {c: {conn_type: http}", "not valid YAML"),
        ("- a list", "must be a mapping of connections, variables, pools"),
    ],
)
def test_a_malformed_entry_is_one_clear_line(text: str, message: str) -> None:
    with pytest.raises(UserError) as exc:
        objects.parse(text, FILE)
    assert exc.value.code is ExitCode.USAGE
    assert message in exc.value.message
    assert exc.value.message.startswith("settings.yaml: ")
    assert "\n" not in exc.value.message


def test_a_connection_already_in_the_environment_is_refused() -> None:
    with pytest.raises(UserError) as exc:
        objects.parse("connections:\n  mockserver: {conn_type: http}", FILE, {"MOCKSERVER"})
    assert "AIRFLOW_CONN_MOCKSERVER in airflow.env already defines it" in exc.value.message


def test_a_missing_file_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(UserError) as exc:
        objects.load(tmp_path / "nope.yaml", {})
    assert (
        exc.value.message == f"{tmp_path / 'nope.yaml'}: no such settings file (AIRFLOW_SETTINGS)"
    )


def test_apply_overwrites_through_the_bulk_endpoints() -> None:
    seen: list[tuple[str, dict[str, object]]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/auth/token":
            return httpx.Response(201, json={"access_token": "t"})
        body = json.loads(request.content)
        seen.append((request.url.path, body))
        return httpx.Response(200, json={"create": {"success": ["x"], "errors": []}})

    client = AirflowAPI("http://api", "pw", transport=httpx.MockTransport(handler))
    found = objects.parse("variables: {a: 1}\npools: {p: {slots: 1}}", FILE)
    assert objects.apply(client, found) == {"variables": ["a"], "pools": ["p"]}
    assert [path for path, _ in seen] == ["/api/v2/variables", "/api/v2/pools"]
    action = seen[0][1]["actions"][0]  # type: ignore[index]
    assert action == {
        "action": "create",
        "entities": [{"key": "a", "value": "1"}],
        "action_on_existence": "overwrite",
    }
