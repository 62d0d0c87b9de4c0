"""Connections, variables and pools from a YAML file (airflow/settings.yaml, or $AIRFLOW_SETTINGS),
applied through the REST API: at `up` and by `invoke settings`, idempotently (each entry is created
or overwritten; nothing else is touched). Connections given as AIRFLOW_CONN_* variables in
airflow/airflow.env stay as they are: the environment wins in Airflow, and this file may not name
them again.

The file::

    connections:
      my_postgres: {conn_type: postgres, host: db.example, port: 5432, login: me, password: x}
    variables:
      threshold: 10            # any JSON value; strings stay strings
    pools:
      heavy: {slots: 2, description: tasks that need a lot of memory}
"""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from airflow_k3s.airflow_api import AirflowAPI
from airflow_k3s.exits import ExitCode, UserError

CONNECTION_FIELDS = {
    "conn_type",
    "description",
    "host",
    "login",
    "password",
    "schema",
    "port",
    "extra",
}
POOL_FIELDS = {"slots", "description", "include_deferred"}
KINDS = ("connections", "variables", "pools")


@dataclass(frozen=True)
class AirflowObjects:
    """What the file asks for, checked: API payloads by kind."""

    connections: tuple[dict[str, Any], ...] = ()
    variables: tuple[dict[str, Any], ...] = ()
    pools: tuple[dict[str, Any], ...] = ()

    def count(self) -> str:
        return ", ".join(f"{len(getattr(self, k))} {k}" for k in KINDS)


def _bad(path: Path, where: str, what: str) -> UserError:
    return UserError(f"{path}: {where}: {what}", ExitCode.USAGE)


def _connection(path: Path, conn_id: str, spec: Any, env_ids: set[str]) -> dict[str, Any]:
    where = f"connections.{conn_id}"
    if conn_id.upper() in env_ids:
        raise _bad(path, where, f"AIRFLOW_CONN_{conn_id.upper()} in airflow.env already defines it")
    if not isinstance(spec, dict):
        raise _bad(path, where, "must be a mapping like {conn_type: http, host: example.com}")
    unknown = set(spec) - CONNECTION_FIELDS
    if unknown:
        raise _bad(path, where, f"unknown field(s) {', '.join(sorted(unknown))}")
    if not spec.get("conn_type"):
        raise _bad(path, where, "conn_type is required")
    if "port" in spec and not isinstance(spec["port"], int):
        raise _bad(path, where, f"port must be a number, not {spec['port']!r}")
    payload = {"connection_id": conn_id, **spec}
    if isinstance(payload.get("extra"), dict):
        payload["extra"] = json.dumps(payload["extra"])
    return payload


def _pool(path: Path, name: str, spec: Any) -> dict[str, Any]:
    where = f"pools.{name}"
    if not isinstance(spec, dict):
        raise _bad(path, where, "must be a mapping like {slots: 4}")
    unknown = set(spec) - POOL_FIELDS
    if unknown:
        raise _bad(path, where, f"unknown field(s) {', '.join(sorted(unknown))}")
    slots = spec.get("slots")
    if not isinstance(slots, int) or isinstance(slots, bool) or slots < -1:
        raise _bad(path, where, f"slots must be a whole number (-1: unlimited), not {slots!r}")
    return {"name": name, **spec}


def parse(text: str, path: Path, env_connection_ids: Collection[str] = ()) -> AirflowObjects:
    """Check the file and turn it into API payloads; a malformed entry is one clear line."""
    try:
        doc = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise UserError(
            f"{path}: not valid YAML: {str(exc).splitlines()[0]}", ExitCode.USAGE
        ) from None
    if not isinstance(doc, dict):
        raise UserError(f"{path}: must be a mapping of {', '.join(KINDS)}", ExitCode.USAGE)
    unknown = set(doc) - set(KINDS)
    if unknown:
        names = ", ".join(sorted(map(str, unknown)))
        raise UserError(
            f"{path}: unknown section(s) {names} (known: {', '.join(KINDS)})", ExitCode.USAGE
        )
    for kind in KINDS:
        if not isinstance(doc.get(kind) or {}, dict):
            raise UserError(f"{path}: {kind} must be a mapping of names to entries", ExitCode.USAGE)
    ids = {i.upper() for i in env_connection_ids}
    return AirflowObjects(
        connections=tuple(
            _connection(path, str(k), v, ids) for k, v in (doc.get("connections") or {}).items()
        ),
        variables=tuple(
            {"key": str(k), "value": v if isinstance(v, str) else json.dumps(v)}
            for k, v in (doc.get("variables") or {}).items()
        ),
        pools=tuple(_pool(path, str(k), v) for k, v in (doc.get("pools") or {}).items()),
    )


def load(path: Path, airflow_env: dict[str, str]) -> AirflowObjects:
    """The settings file, checked against airflow.env's AIRFLOW_CONN_* variables."""
    if not path.is_file():
        raise UserError(f"{path}: no such settings file (AIRFLOW_SETTINGS)", ExitCode.USAGE)
    env_ids = {
        k.removeprefix("AIRFLOW_CONN_") for k in airflow_env if k.startswith("AIRFLOW_CONN_")
    }
    return parse(path.read_text(), path, env_ids)


def apply(client: AirflowAPI, objects: AirflowObjects) -> dict[str, list[str]]:
    """Create or overwrite every entry (the REST API's bulk endpoints); what each kind changed."""
    done: dict[str, list[str]] = {}
    for kind, key in (("connections", "connection_id"), ("variables", "key"), ("pools", "name")):
        entities = list(getattr(objects, kind))
        if not entities:
            continue
        body = {
            "actions": [
                {"action": "create", "entities": entities, "action_on_existence": "overwrite"}
            ]
        }
        response = client.http.patch(f"/api/v2/{kind}", json=body)
        response.raise_for_status()
        result = response.json().get("create", {})
        errors = result.get("errors") or []
        if errors:
            raise UserError(f"the API refused some {kind}: {errors}")
        done[kind] = [str(e[key]) for e in entities]
    return done
