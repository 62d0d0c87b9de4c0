"""airflow_k3s.airflow_api and airflow_k3s.runs: the REST client and what runs make of it.

The HTTP boundary is an httpx.MockTransport; the client code above it is the real one.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from airflow_k3s import airflow_api, runs
from airflow_k3s.airflow_api import AirflowAPI
from airflow_k3s.exits import ExitCode, UserError


def login(request: httpx.Request) -> httpx.Response | None:
    """The simple auth manager's token endpoint: admin/right only."""
    if (request.method, request.url.path) != ("POST", "/auth/token"):
        return None
    body = json.loads(request.content)
    ok = body == {"username": "admin", "password": "right"}
    return httpx.Response(201 if ok else 401, json={"access_token": "t"})


def client(routes: dict[tuple[str, str], httpx.Response]) -> AirflowAPI:
    """An AirflowAPI whose HTTP boundary answers ``routes`` (and 404 to everything else)."""

    def handler(request: httpx.Request) -> httpx.Response:
        token = login(request)
        if token is not None:
            return token
        assert request.headers["Authorization"] == "Bearer t"
        return routes.get(
            (request.method, request.url.path), httpx.Response(404, json={"detail": "not found"})
        )

    return AirflowAPI("http://airflow", "right", transport=httpx.MockTransport(handler))


# --------------------------------------------------------------------------- login, DAGs


@pytest.mark.parametrize("status", [401, 403])
def test_wrong_login_is_one_clear_line(status: int) -> None:
    transport = httpx.MockTransport(lambda _r: httpx.Response(status, json={"detail": "no"}))
    with pytest.raises(UserError) as exc:
        AirflowAPI("http://airflow", "wrong", transport=transport)
    assert exc.value.code is ExitCode.LOGIN_REFUSED
    assert exc.value.message.startswith("login as 'admin' was refused by http://airflow")
    assert "AIRFLOW_ADMIN_PASSWORD" in exc.value.message


def test_a_broken_api_server_is_an_http_error_not_a_login_refusal() -> None:
    transport = httpx.MockTransport(lambda _r: httpx.Response(500, json={}))
    with pytest.raises(httpx.HTTPStatusError):
        AirflowAPI("http://airflow", "right", transport=transport)


def test_unknown_dag_lists_known_dags_and_import_errors() -> None:
    api = client(
        {
            ("GET", "/api/v2/dags"): httpx.Response(200, json={"dags": [{"dag_id": "demo"}]}),
            ("GET", "/api/v2/importErrors"): httpx.Response(
                200,
                json={
                    "import_errors": [
                        {
                            "filename": "/opt/airflow/dags/broken.py",
                            "stack_trace": "Traceback ...\nNameError: name 'x' is not defined\n",
                        }
                    ]
                },
            ),
        }
    )
    with pytest.raises(UserError) as exc:
        api.find_dag("nope", timeout=0)
    assert exc.value.code is ExitCode.UNKNOWN_DAG
    assert exc.value.message == (
        "unknown DAG id 'nope'; known DAGs: demo; DAG files that fail to import: "
        "/opt/airflow/dags/broken.py: NameError: name 'x' is not defined"
    )


def test_find_dag_returns_for_a_known_dag_at_once() -> None:
    asked: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        asked.append(request.url.path)
        token = login(request)
        if token is not None:
            return token
        assert request.url.path == "/api/v2/dags/demo", "nothing else for a known DAG"
        return httpx.Response(200, json={"dag_id": "demo"})

    api = AirflowAPI("http://airflow", "right", transport=httpx.MockTransport(handler))
    api.find_dag("demo", timeout=0)
    assert asked == ["/auth/token", "/api/v2/dags/demo"]


def test_find_dag_waits_while_the_dag_is_stale(monkeypatch: pytest.MonkeyPatch) -> None:
    """A DAG file deleted and put back: the DAG is listed but stale (Airflow refuses a run of
    it) until the dag-processor has parsed the file again."""
    clock = FakeClock()
    monkeypatch.setattr(airflow_api, "time", clock)
    monkeypatch.setattr("airflow_k3s.shell.time", clock)
    answers = iter([True, False])

    def handler(request: httpx.Request) -> httpx.Response:
        token = login(request)
        if token is not None:
            return token
        if request.url.path == "/api/v2/dags/edited":
            return httpx.Response(200, json={"dag_id": "edited", "is_stale": next(answers)})
        if request.url.path == "/api/v2/dags":
            return httpx.Response(200, json={"dags": [{"dag_id": "edited"}]})
        return httpx.Response(200, json={"import_errors": []})

    api = AirflowAPI("http://a", "right", transport=httpx.MockTransport(handler))
    api.find_dag("edited", timeout=90)
    assert next(answers, "all asked") == "all asked"


class FakeClock:
    """The ``time`` module of airflow_api and of the poll helper: 5 s pass per look at the clock,
    sleeping is free."""

    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        self.now += 5
        return self.now

    def sleep(self, _seconds: float) -> None:
        pass


def test_find_dag_waits_one_refresh_for_a_new_file(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock()
    monkeypatch.setattr(airflow_api, "time", clock)
    monkeypatch.setattr("airflow_k3s.shell.time", clock)
    polls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        token = login(request)
        if token is not None:
            return token
        polls.append(request.url.path)
        if request.url.path == "/api/v2/dags":
            return httpx.Response(200, json={"dags": [{"dag_id": "demo"}]})
        if request.url.path == "/api/v2/importErrors":
            return httpx.Response(200, json={"import_errors": []})
        return httpx.Response(404, json={})

    api = AirflowAPI("http://a", "right", transport=httpx.MockTransport(handler))
    with pytest.raises(UserError) as exc:
        api.find_dag("new_dag", timeout=90)
    assert polls.count("/api/v2/dags/new_dag") > 1, "it waited for the dag-processor"
    assert polls.count("/api/v2/dags/new_dag") < 10, "but not the whole parse timeout"
    assert exc.value.code is ExitCode.UNKNOWN_DAG
    assert exc.value.message == "unknown DAG id 'new_dag'; known DAGs: demo"


def test_trigger_unpauses_then_posts_a_run_with_conf() -> None:
    calls: list[tuple[str, str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        token = login(request)
        if token is not None:
            return token
        calls.append((request.method, request.url.path, json.loads(request.content or b"null")))
        if request.method == "POST":
            return httpx.Response(200, json={"dag_run_id": "manual__1"})
        return httpx.Response(200, json={})

    api = AirflowAPI("http://a", "right", transport=httpx.MockTransport(handler))
    assert api.trigger("demo", {"n": 1})["dag_run_id"] == "manual__1"
    assert calls == [
        ("PATCH", "/api/v2/dags/demo", {"is_paused": False}),
        ("POST", "/api/v2/dags/demo/dagRuns", {"logical_date": None, "conf": {"n": 1}}),
    ]


def test_run_state_and_task_log() -> None:
    run = "/api/v2/dags/demo/dagRuns/r1"
    api = client(
        {
            ("GET", run): httpx.Response(200, json={"state": "running"}),
            ("GET", f"{run}/taskInstances"): httpx.Response(
                200, json={"task_instances": [{"task_id": "fetch", "state": "success"}]}
            ),
            ("GET", f"{run}/taskInstances/fetch/logs/2"): httpx.Response(
                200, json={"content": [{"level": "info", "event": "hello"}]}
            ),
        }
    )
    assert api.run_state("demo", "r1") == (
        "running",
        {"fetch": {"task_id": "fetch", "state": "success"}},
    )
    assert api.task_log("demo", "r1", "fetch", 2) == "[info] hello"


# --------------------------------------------------------------------------- log rendering


def test_render_log_turns_structured_messages_into_lines() -> None:
    content = [
        "::group::Log message source details",
        {"timestamp": "2026-11-25T20:20:02Z", "level": "info", "event": "Wrote 3 orders"},
        {"event": "no level"},
    ]
    assert airflow_api.render_log(content).splitlines() == [
        "::group::Log message source details",
        "2026-11-25T20:20:02Z [info] Wrote 3 orders",
        "no level",
    ]


def test_render_log_keeps_the_exception_of_an_error_line() -> None:
    item = {
        "level": "error",
        "event": "Task failed with exception",
        "error_detail": [{"exc_type": "EndpointConnectionError", "exc_value": "no s3"}],
    }
    assert airflow_api.render_log([item]) == (
        "[error] Task failed with exception: EndpointConnectionError: no s3"
    )


@pytest.mark.parametrize(
    ("line", "rendered"),
    [
        ("plain text, not JSON", "plain text, not JSON"),
        ('["a", "list"]', '["a", "list"]'),
        ('{"no": "event"}', '{"no": "event"}'),
        (
            '{"timestamp": "t", "level": "info", "event": "Wrote 3 orders"}',
            "t [info] Wrote 3 orders",
        ),
        (
            json.dumps(
                {
                    "timestamp": "t",
                    "level": "error",
                    "event": "Task failed",
                    "exception": [{"exc_type": "KeyError", "exc_value": "'x'"}],
                }
            ),
            "t [error] Task failed: KeyError: 'x'",
        ),
        (
            '{"timestamp": "t", "level": "info", "event": "done", "final_state": "failed", '
            '"exit_code": 1}',
            "t [info] done (final_state=failed, exit_code=1)",
        ),
    ],
)
def test_render_pod_line(line: str, rendered: str) -> None:
    assert airflow_api.render_pod_line(line) == rendered


# --------------------------------------------------------------------------- runs


@pytest.mark.parametrize(
    ("conf", "expected"), [("", {}), ('{"rows": 3, "dry": true}', {"rows": 3, "dry": True})]
)
def test_parse_conf_accepts_json_objects(conf: str, expected: dict[str, Any]) -> None:
    assert runs.parse_conf(conf) == expected


@pytest.mark.parametrize(
    ("conf", "message"),
    [
        (
            "{oops",
            "--conf is not valid JSON (Expecting property name enclosed in double quotes at "
            "character 1): {oops",
        ),
        ("[1, 2]", "--conf must be a JSON object like '{\"key\": 1}', not [1, 2]"),
        ('"text"', '--conf must be a JSON object like \'{"key": 1}\', not "text"'),
    ],
)
def test_parse_conf_refuses_bad_json(conf: str, message: str) -> None:
    with pytest.raises(UserError) as exc:
        runs.parse_conf(conf)
    assert exc.value.message == message
    assert exc.value.code is ExitCode.USAGE


def test_state_changes_reports_only_changes() -> None:
    before = {"fetch": "running", "upload": ""}
    after = {"fetch": "success", "upload": "", "verify": "queued"}
    assert runs.state_changes(before, after) == [
        "fetch: running -> success",
        "verify: none -> queued",
    ]
    assert runs.state_changes(after, after) == []


def test_mapped_task_instances_are_counted_not_listed() -> None:
    from airflow_k3s.airflow_api import ti_key
    from airflow_k3s.runs import progress

    rows: list[dict[str, Any]] = [
        {"task_id": "items", "map_index": -1, "state": "success"},
        *({"task_id": "noop", "map_index": i, "state": "running"} for i in range(3)),
        {"task_id": "noop", "map_index": 3, "state": None},
    ]
    tis = {ti_key(ti): ti for ti in rows}
    assert sorted(tis) == ["items", "noop[0]", "noop[1]", "noop[2]", "noop[3]"]
    assert progress(tis) == {"items": "success", "noop (4 mapped)": "none 1, running 3"}


def test_run_state_reads_every_page_of_a_run_with_more_than_100_task_instances() -> None:
    """The API server cuts any `limit` to 100 (`[api] maximum_page_limit`): a run of 1 + 150
    mapped task instances is read in two pages, none lost."""
    tis = [{"task_id": "items", "map_index": -1, "state": "success"}] + [
        {"task_id": "noop", "map_index": i, "state": "success"} for i in range(150)
    ]
    pages: list[tuple[str, str]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        token = login(request)
        if token is not None:
            return token
        if request.url.path == "/api/v2/dags/bench/dagRuns/r1":
            return httpx.Response(200, json={"state": "success"})
        limit = min(int(request.url.params["limit"]), 100)
        offset = int(request.url.params["offset"])
        pages.append((request.url.params["limit"], request.url.params["offset"]))
        body = {"task_instances": tis[offset : offset + limit], "total_entries": len(tis)}
        return httpx.Response(200, json=body)

    api = AirflowAPI("http://a", "right", transport=httpx.MockTransport(handler))
    state, by_key = api.run_state("bench", "r1")
    assert state == "success"
    assert len(by_key) == 151
    assert runs.progress(by_key)["noop (150 mapped)"] == "success 150"
    assert pages == [("100", "0"), ("100", "100")]


# --------------------------------------------------------------------------- following a run


def restarting_api(outage: list[Exception | int]) -> AirflowAPI:
    """A run that succeeds on the third look; before that the API fails as ``outage`` says
    (an exception the transport raises, or an HTTP status), one failure a request."""
    looks = iter(["running", "running", "success"])
    failures = iter(outage)

    def handler(request: httpx.Request) -> httpx.Response:
        token = login(request)
        if token is not None:
            return token
        failure = next(failures, None)
        if isinstance(failure, Exception):
            raise failure
        if failure is not None:
            return httpx.Response(failure, json={"detail": "starting"})
        if request.url.path.endswith("/taskInstances"):
            return httpx.Response(200, json={"task_instances": [{"task_id": "t", "state": ""}]})
        return httpx.Response(200, json={"state": next(looks)})

    return AirflowAPI("http://a", "right", transport=httpx.MockTransport(handler))


def test_the_follower_rides_out_an_api_server_restart(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Connection refused, reset, then a 503 while the api-server starts: the follower says it
    waits for the API, goes on when it answers, and returns the run's true state."""
    monkeypatch.setattr(runs, "POLL_SECONDS", 0)
    outage: list[Exception | int] = [
        httpx.ConnectError("[Errno 111] Connection refused"),
        httpx.ReadError("[Errno 104] Connection reset by peer"),
        503,
    ]
    api = restarting_api(outage)
    assert runs.follow_run(None, api, "demo", "r1", timeout=30) == "success"  # type: ignore[arg-type]
    err = capsys.readouterr().err
    assert err.count("waiting for the Airflow API ([Errno 111] Connection refused)") == 1
    assert "==> the Airflow API answers again" in err
    assert "==> run r1 of demo ended: success" in err


def test_the_follower_does_not_ride_out_a_refusal(monkeypatch: pytest.MonkeyPatch) -> None:
    """A 4xx is no outage (a wrong run id, a lost login): it ends the follower at once."""
    monkeypatch.setattr(runs, "POLL_SECONDS", 0)
    with pytest.raises(httpx.HTTPStatusError):
        runs.follow_run(None, restarting_api([404]), "demo", "r1", timeout=30)  # type: ignore[arg-type]
