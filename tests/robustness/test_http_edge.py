"""The HTTP edge of the real ``face-service serve``, over raw sockets: timeouts, the connection limit,
file-descriptor exhaustion, keys in URLs, early refusal of unauthenticated uploads, metric labels,
and keep-alive after a 500.
"""

from __future__ import annotations

import logging
import re
import resource
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import h11
import httpx
import pytest
import uvicorn
from fastapi import Depends, FastAPI, Request
from fastapi.routing import iter_route_contexts
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benchmarks.local_server import LocalServer, free_port
from service.api.app import create_app
from service.api.http_server import server_config
from service.api.log_filters import (
    CREDENTIAL_PARAMETERS,
    FLOOD_MESSAGES,
    REDACTED,
    RepeatCapFilter,
    redact_credentials,
)
from service.api.metrics import KNOWN_METHODS, OTHER_METHOD, UNMATCHED_ROUTE
from service.auth.keys import generate_key
from tests.api.conftest import ADMIN_KEY, api_settings, running_app
from tests.robustness.conftest import ServerFactory

HEADER_TIMEOUT_S = 3.0
CLOSE_MARGIN_S = 3.0  # a loaded test machine; far below "never"
MAX_CONNECTIONS = 20


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, default_pack_dir: Path) -> Iterator[LocalServer]:
    base = tmp_path_factory.mktemp("http-edge")
    env = {
        "FACE_MODELS_DIR": str(default_pack_dir.parent),
        "FACE_PACK": default_pack_dir.name,
        "FACE_HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S),
        "FACE_MAX_CONNECTIONS": str(MAX_CONNECTIONS),
        "FACE_LOG_LEVEL": "info",  # the access log is on: what it writes is under test
    }
    with LocalServer(base / "data", env=env, log_path=base / "server.log") as running:
        yield running


def _connect(server: LocalServer) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=10.0)


def _seconds_until_closed(sock: socket.socket, limit_s: float) -> float:
    """Seconds until the server closes ``sock`` (reads and drops whatever it sends first)."""
    started = time.monotonic()
    sock.settimeout(limit_s)
    try:
        while sock.recv(65536):
            pass
    except (ConnectionResetError, TimeoutError):
        pass
    return time.monotonic() - started


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes = b""


@dataclass
class RawClient:
    """HTTP/1.1 over one socket, parsed by h11: shows whether the server kept the connection."""

    sock: socket.socket
    conn: h11.Connection = field(default_factory=lambda: h11.Connection(h11.CLIENT))

    def send_head(self, method: str, target: str, headers: Sequence[tuple[str, str]]) -> None:
        head = h11.Request(method=method, target=target, headers=[("Host", "127.0.0.1"), *headers])
        self.sock.sendall(self.conn.send(head))

    def request(
        self, method: str, target: str, headers: Sequence[tuple[str, str]] = (), body: bytes = b""
    ) -> RawResponse:
        self.send_head(method, target, [*headers, ("Content-Length", str(len(body)))])
        self.sock.sendall(self.conn.send(h11.Data(data=body)) + self.conn.send(h11.EndOfMessage()))
        response = self.read_response()
        self.conn.start_next_cycle()
        return response

    def read_response(self) -> RawResponse:
        response: RawResponse | None = None
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                self.conn.receive_data(self.sock.recv(65536))
            elif isinstance(event, h11.Response):
                headers = {name.decode().lower(): value.decode() for name, value in event.headers}
                response = RawResponse(event.status_code, headers)
            elif isinstance(event, h11.Data) and response is not None:
                response.body += event.data
            elif isinstance(event, h11.EndOfMessage) and response is not None:
                return response
            elif isinstance(event, h11.ConnectionClosed):
                raise ConnectionError("the server closed the connection")


# --- header and idle timeouts


def _stall_idle(sock: socket.socket) -> None:
    pass


def _stall_in_request_line(sock: socket.socket) -> None:
    sock.sendall(b"GET /heal")


def _stall_in_headers(sock: socket.socket) -> None:
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Partial: y")


def _stall_after_a_response(sock: socket.socket) -> None:
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert b" 200 " in sock.recv(65536)
    sock.sendall(b"GET /healthz HTTP/1.1\r\n")


def _trickle_headers(sock: socket.socket) -> None:
    """Slowloris: a header byte every 0.2 s keeps the connection busy but never completes the head."""

    def trickle() -> None:
        try:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            for _ in range(200):
                sock.sendall(b"X")
                time.sleep(0.2)
        except OSError:  # closed by the server: the point
            pass

    threading.Thread(target=trickle, daemon=True).start()


STALLS = {
    "idle": _stall_idle,
    "request line cut": _stall_in_request_line,
    "headers cut": _stall_in_headers,
    "half a head after a response": _stall_after_a_response,
    "trickled headers": _trickle_headers,
}


def test_idle_and_half_sent_connections_are_closed_within_the_header_timeout(server: LocalServer) -> None:
    waited: dict[str, float] = {}

    def run(name: str) -> None:
        with _connect(server) as sock:
            STALLS[name](sock)
            waited[name] = _seconds_until_closed(sock, HEADER_TIMEOUT_S + 30)

    threads = [threading.Thread(target=run, args=(name,)) for name in STALLS]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert set(waited) == set(STALLS)
    for name, seconds in waited.items():
        assert HEADER_TIMEOUT_S * 0.6 <= seconds <= HEADER_TIMEOUT_S + CLOSE_MARGIN_S, (name, seconds)


def test_a_complete_request_is_still_served_and_kept_alive(server: LocalServer) -> None:
    with _connect(server) as sock:
        client = RawClient(sock)
        for _ in range(3):
            assert client.request("GET", "/healthz").status == 200
            time.sleep(HEADER_TIMEOUT_S / 3)


# --- connection limit and file-descriptor exhaustion


def test_over_the_connection_limit_healthz_gets_a_clean_503_then_recovers(server: LocalServer) -> None:
    idle = [_connect(server) for _ in range(MAX_CONNECTIONS + 10)]
    opened = time.monotonic()
    try:
        time.sleep(0.3)  # all accepted
        refused = 0
        while time.monotonic() - opened < HEADER_TIMEOUT_S / 2:  # well before the idle ones time out
            response = httpx.get(f"{server.base_url}/healthz", timeout=5.0)
            assert response.status_code == 503
            refused += 1
        assert refused >= 3
        deadline = time.monotonic() + HEADER_TIMEOUT_S + CLOSE_MARGIN_S + 2
        while time.monotonic() < deadline:  # the idle ones time out; the server frees itself
            if httpx.get(f"{server.base_url}/healthz", timeout=5.0).status_code == 200:
                break
            time.sleep(0.2)
        else:
            pytest.fail("/healthz did not recover after the idle connections timed out")
        assert all(_seconds_until_closed(sock, CLOSE_MARGIN_S) < CLOSE_MARGIN_S for sock in idle)
    finally:
        for sock in idle:
            sock.close()
    # Many refusals, one warning: the rest are counted, not written.
    assert server.log_text().count("Exceeded concurrency limit.") == 1


def _open_descriptors(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


def test_running_out_of_descriptors_heals_and_logs_once(make_server: ServerFactory) -> None:
    server = make_server("fd", FACE_HEADER_TIMEOUT_S=str(HEADER_TIMEOUT_S))
    server.start()
    spare = 10
    _, hard = resource.prlimit(server.pid, resource.RLIMIT_NOFILE)
    resource.prlimit(server.pid, resource.RLIMIT_NOFILE, (_open_descriptors(server.pid) + spare, hard))
    held = [socket.create_connection(("127.0.0.1", server.port), timeout=10.0) for _ in range(6 * spare)]
    try:
        time.sleep(4.5)  # asyncio retries accept() every second while the table is full
        deadline = time.monotonic() + 6 * (HEADER_TIMEOUT_S + CLOSE_MARGIN_S)
        while time.monotonic() < deadline:  # idle ones time out, the backlog drains, /healthz answers
            try:
                if httpx.get(f"{server.base_url}/healthz", timeout=3.0).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        else:
            pytest.fail("/healthz never answered again after the descriptor table filled")
    finally:
        for sock in held:
            sock.close()
    assert server.log_text().count("socket.accept() out of system resource") == 1


# --- API keys in the URL


CREDENTIAL_NAMES = (
    *("api_key", "API_KEY", "apikey", "api-key", "x-api-key", "api%5Fkey", "Api.Key"),
    *("token", "access_token", "key", "bearer", "password"),
)
TARGETS = (("GET", "/v1/subjects"), ("POST", "/v1/detect"), ("GET", "/healthz"), ("GET", "/v1/nowhere"))


def test_a_key_in_the_query_string_is_refused_and_never_logged(server: LocalServer) -> None:
    secrets_sent: list[str] = []
    with httpx.Client(base_url=server.base_url, timeout=10.0) as client:
        for index, name in enumerate(CREDENTIAL_NAMES):
            for method, path in TARGETS:
                secret = f"s3cret{index}x{len(secrets_sent)}Q"
                secrets_sent.append(secret)
                response = client.request(method, f"{path}?limit=5&{name}={secret}")
                assert response.status_code == 400, (name, path, response.text)
                body = response.json()
                assert body["type"].endswith(":credentials_in_url")
                assert body["errors"][0]["field"].startswith("query.")
                assert secret not in response.text
        # The real admin key, too, in a query and in a path.
        response = client.get(f"/v1/subjects?api_key={server.api_key}")
        assert response.status_code == 400
        assert client.get(f"/v1/{server.api_key}", headers=server.headers).status_code == 404
        # An ordinary query parameter is still logged (redaction is by name, not wholesale).
        assert client.get("/v1/subjects?limit=7", headers=server.headers).status_code == 200
    log = server.log_text()
    assert "/v1/subjects?limit=7" in log
    assert "[redacted]" in log
    for secret in secrets_sent:
        assert secret not in log
    assert server.api_key not in log


# --- unauthenticated uploads are refused before their body


BODY_ROUTES = {
    ("POST", "/v1/detect"),
    ("POST", "/v1/embed"),
    ("POST", "/v1/verify"),
    ("POST", "/v1/identify"),
    ("POST", "/v1/identify/embedding"),
    ("POST", "/v1/subjects"),
    ("PATCH", "/v1/subjects/{subject_id}"),
    ("POST", "/v1/subjects/{subject_id}/faces"),
    ("POST", "/v1/subjects/{subject_id}/merge"),
    ("POST", "/v1/faces/{face_id}/move"),
    ("POST", "/v1/gallery/import"),
}
# The gallery routes again under /v1/collections/{collection}/ (the keys are the service's: once).
BODY_ROUTES |= {
    (method, path.replace("/v1/", "/v1/collections/{collection}/", 1)) for method, path in BODY_ROUTES
}
BODY_ROUTES.add(("POST", "/v1/keys"))
SOME_ID = "00000000-0000-4000-8000-000000000000"
BAD_CREDENTIALS: tuple[tuple[str, list[tuple[str, str]]], ...] = (
    ("missing_api_key", []),
    ("invalid_api_key", [("X-API-Key", "not-a-key")]),
    ("invalid_api_key", [("Authorization", "Bearer not-a-key")]),
)
DECLARED_BYTES = 20 * 1024 * 1024  # under FACE_MAX_REQUEST_BYTES: only the key can refuse it


def test_body_routes_cover_the_schema(server: LocalServer) -> None:
    schema = httpx.get(f"{server.base_url}/openapi.json", timeout=10.0).json()
    with_body = {
        (method.upper(), path)
        for path, operations in schema["paths"].items()
        for method, operation in operations.items()
        if "requestBody" in operation
    }
    assert with_body == BODY_ROUTES


@pytest.mark.parametrize(("code", "credentials"), BAD_CREDENTIALS, ids=("none", "x-api-key", "bearer"))
def test_an_unauthenticated_upload_gets_401_before_its_body(
    server: LocalServer, code: str, credentials: list[tuple[str, str]]
) -> None:
    for method, template in sorted(BODY_ROUTES):
        path = re.sub(r"\{[^}]+\}", SOME_ID, template)
        with _connect(server) as sock:
            client = RawClient(sock)
            client.send_head(
                method,
                path,
                [
                    *credentials,
                    ("Content-Type", "multipart/form-data; boundary=xyz"),
                    ("Content-Length", str(DECLARED_BYTES)),
                ],
            )
            sock.settimeout(5.0)  # not one body byte was sent: the answer must come anyway
            response = client.read_response()
            assert response.status == 401, (method, path)
            assert f":{code}".encode() in response.body
            assert response.headers["www-authenticate"].startswith("Bearer")
            assert _seconds_until_closed(sock, 5.0) < 5.0  # and the server does not wait for it


def test_an_authenticated_upload_is_read_as_usual(server: LocalServer) -> None:
    with _connect(server) as sock:
        client = RawClient(sock)
        headers = [("X-API-Key", server.api_key), ("Content-Type", "multipart/form-data; boundary=xyz")]
        client.send_head("POST", "/v1/detect", [*headers, ("Content-Length", str(DECLARED_BYTES))])
        sock.settimeout(1.0)
        with pytest.raises(TimeoutError):  # the server is waiting for the body, as it should
            sock.recv(1)


# --- metric labels


MADE_UP_METHODS = [f"X{index}METHOD" for index in range(150)] + ["get", "Post", "PURGE", "PROPFIND", "BREW"]


def test_made_up_methods_and_paths_do_not_grow_metrics(server: LocalServer) -> None:
    def scrape() -> str:
        return httpx.get(f"{server.base_url}/metrics", timeout=10.0).text

    for warm_up in ("BREW", "GET"):  # the one "OTHER" label set and the unmatched GET exist first
        with _connect(server) as sock:
            RawClient(sock).request(warm_up, "/warm-up")
    before = scrape()
    for index, method in enumerate(MADE_UP_METHODS):
        with _connect(server) as sock:
            RawClient(sock).request(method, f"/made/up/{index}/path")
    after = scrape()
    request_lines = [line for line in after.splitlines() if line.startswith("face_http_request_duration")]
    methods = {line.split('method="')[1].split('"')[0] for line in request_lines}
    assert methods <= {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "OTHER"}
    assert not any("/made/up" in line for line in request_lines)
    assert len(after) - len(before) < 2_000  # counts moved; no new label sets


# --- keep-alive after a 500 (an in-process server: a route that fails on purpose)


EXCEPTIONS: tuple[type[Exception], ...] = (RuntimeError, KeyError, ZeroDivisionError, OSError, ValueError)


@pytest.fixture(scope="module")
def failing_server(tmp_path_factory: pytest.TempPathFactory, default_pack_dir: Path) -> Iterator[int]:
    """The real app and ``serve``'s uvicorn configuration, plus routes that raise (sync, async, in a
    dependency, after reading the body); yields the port."""
    app_settings = api_settings(tmp_path_factory.mktemp("failing"), default_pack_dir, port=free_port())
    app: FastAPI = create_app(app_settings)

    def kind(name: str) -> type[Exception]:
        return next(exc for exc in EXCEPTIONS if exc.__name__ == name)

    @app.get("/fail/async/{name}")
    async def fail_async(name: str) -> None:
        raise kind(name)("failed on purpose")

    @app.get("/fail/sync/{name}")
    def fail_sync(name: str) -> None:
        raise kind(name)("failed on purpose")

    def failing_dependency(name: str) -> None:
        raise kind(name)("failed on purpose")

    @app.get("/fail/dependency/{name}", dependencies=[Depends(failing_dependency)])
    async def fail_dependency(name: str) -> None:
        return None

    @app.post("/fail/after-body/{name}")
    async def fail_after_body(name: str, request: Request) -> None:
        await request.body()
        raise kind(name)("failed on purpose")

    uvicorn_server = uvicorn.Server(server_config(app, app_settings))
    thread = threading.Thread(target=uvicorn_server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{app_settings.port}/readyz", timeout=2.0).status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.2)
    else:
        pytest.fail("the in-process server did not become ready")
    yield app_settings.port
    uvicorn_server.should_exit = True
    thread.join(timeout=30)


def test_a_500_keeps_the_keep_alive_connection(failing_server: int, caplog: pytest.LogCaptureFixture) -> None:
    with socket.create_connection(("127.0.0.1", failing_server), timeout=10.0) as sock:
        client = RawClient(sock)
        served = 0
        for exc in EXCEPTIONS:
            for route in ("async", "sync", "dependency", "after-body"):
                method = "POST" if route == "after-body" else "GET"
                body = b"x" * 100 if method == "POST" else b""
                key = [("X-API-Key", ADMIN_KEY)]  # a body without a key is refused before the route
                failed = client.request(method, f"/fail/{route}/{exc.__name__}", key, body)
                assert failed.status == 500, (route, exc)
                assert failed.headers["content-type"].startswith("application/problem+json")
                assert b":internal_error" in failed.body
                assert b"failed on purpose" not in failed.body  # no internals to the client
                assert "close" not in failed.headers.get("connection", "")
                # The same connection serves the next request.
                assert client.request("GET", "/healthz").status == 200
                served += 1
    assert served == 4 * len(EXCEPTIONS)
    logged = [record for record in caplog.records if record.getMessage().startswith("unhandled ")]
    assert len(logged) == served
    assert all(record.exc_info for record in logged)  # the traceback is in the server log


# --- classes, in process: label cardinality, redaction, the flood cap

# RFC 9110 token characters: every method a client can send.
_TCHAR = "!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_PATH_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~!$&'()*+,;=:@/"
_PATH_PREFIXES = ("/", "/v1/", "/v1/subjects/", "/v1/faces/", "/docs/", "/metrics/")


@pytest.fixture(scope="module")
def app_client(tmp_path_factory: pytest.TempPathFactory, default_pack_dir: Path) -> Iterator[TestClient]:
    with running_app(tmp_path_factory.mktemp("labels"), default_pack_dir) as client:
        yield client


def _request_labels(client: TestClient) -> set[tuple[str, str]]:
    text = client.get("/metrics").text
    labels = set()
    for line in text.splitlines():
        if line.startswith("face_http_request_duration_seconds_count{"):
            route = line.split('route="')[1].split('"')[0]
            method = line.split('method="')[1].split('"')[0]
            labels.add((route, method))
    return labels


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    method=st.text(alphabet=_TCHAR, min_size=1, max_size=24),
    prefix=st.sampled_from(_PATH_PREFIXES),
    rest=st.text(alphabet=_PATH_CHARS, max_size=40),
)
def test_metric_labels_stay_bounded_for_any_method_and_path(
    app_client: TestClient, method: str, prefix: str, rest: str
) -> None:
    app_client.request(method, prefix + rest.strip(), headers={"X-API-Key": ADMIN_KEY})
    templates = {route.path_format for route in iter_route_contexts(app_client.app.routes)}  # type: ignore[attr-defined]
    labels = _request_labels(app_client)
    for route, label_method in labels:
        assert label_method in KNOWN_METHODS | {OTHER_METHOD}
        assert route in templates | {UNMATCHED_ROUTE}, route
    assert len(labels) <= (len(templates) + 1) * (len(KNOWN_METHODS) + 1)


@settings(max_examples=300, deadline=None)
@given(
    name=st.sampled_from(sorted(CREDENTIAL_PARAMETERS)).flatmap(
        lambda base: st.tuples(*(st.sampled_from((ch.lower(), ch.upper())) for ch in base)).map("".join)
    ),
    separator=st.sampled_from(("", "_", "-", ".")),
    value=st.text(alphabet=_TCHAR.replace("&", "").replace("#", ""), min_size=8, max_size=40),
    before=st.sampled_from(("", "limit=5&", "cursor=abc&")),
)
def test_credential_query_values_are_redacted(name: str, separator: str, value: str, before: str) -> None:
    spelled = name[:3] + separator + name[3:] if len(name) > 3 else name
    line = '127.0.0.1:1 - "GET /v1/subjects?{query} HTTP/1.1" 400'
    redacted = redact_credentials(line.format(query=f"{before}{spelled}={value}"))
    assert redacted == line.format(query=f"{before}{spelled}={REDACTED}")  # the rest kept as it was


def test_key_shaped_strings_are_redacted_anywhere() -> None:
    for _ in range(50):
        key = generate_key()[1]
        assert key not in redact_credentials(f'"GET /v1/{key}/x?a={key} HTTP/1.1" 404')


@pytest.mark.parametrize(
    ("logger_name", "prefix"), [(name, p) for name, ps in FLOOD_MESSAGES.items() for p in ps]
)
def test_each_flood_message_is_capped_per_interval(logger_name: str, prefix: str) -> None:
    now = [0.0]
    cap = RepeatCapFilter(FLOOD_MESSAGES[logger_name], interval_s=60.0, clock=lambda: now[0])

    def record(message: str) -> logging.LogRecord:
        return logging.LogRecord(logger_name, logging.ERROR, __file__, 1, message, (), None)

    passed = [cap.filter(record(prefix + " detail")) for _ in range(1000)]
    assert passed.count(True) == 1
    assert cap.filter(record("something else entirely"))  # other messages are untouched
    now[0] = 61.0
    summary = record(prefix)
    assert cap.filter(summary)
    assert "999 more like this dropped" in summary.getMessage()
