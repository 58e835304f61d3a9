"""Schema-driven fuzzing of the lane service's whole HTTP API (schemathesis + hypothesis), and plain
regression tests for what the fuzzing (and reading the routes it reached) found.

The fuzz: every operation of the OpenAPI description the service serves (`GET /openapi.json`), for each way
of calling it (a Bearer key of each role: station, supervisor, admin; and a supervisor's review-UI session
cookie with its CSRF token, the only credential the `/ui/*` routes take), with schemathesis's positive cases
(valid per the schema) and negative ones (invalid per the schema). Each response must:
- not be a server error (`not_a_server_error`), nor raise out of the app (the TestClient re-raises);
- have a documented status code (`status_code_conformance`);
- match the documented response model (`response_schema_conformance`);
and the service must stay healthy afterwards (`/healthz`, `/readyz`, a key still authenticates).

Requests go through the service's own TestClient (its lifespan, store and keys), not through schemathesis's
ASGI transport, which would run a second lifespan of the app on another event loop. Each case is encoded
with `requests` exactly as schemathesis would send it, then replayed as raw bytes.

What the fuzz found is pinned by plain tests below: a form field that raised out of the app, the 422 body
against its documented shape, and answers the description did not list.

Needs schemathesis (dev dependency: `schemathesis>=4.32,<5`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest

schemathesis = pytest.importorskip("schemathesis")
requests = pytest.importorskip("requests")

from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.core.failures import FailureGroup  # noqa: E402
from schemathesis.specs.openapi.checks import response_schema_conformance, status_code_conformance  # noqa: E402

from edge_support import Service, png_bytes, post_png, running_service  # noqa: E402

ROLES = ("station", "supervisor", "admin", "supervisor-session")
CHECKS = (not_a_server_error, status_code_conformance, response_schema_conformance)
#: Cases per operation and caller: small, so the whole file runs in well under a minute on 2 cores.
POSITIVE_EXAMPLES = 20
NEGATIVE_EXAMPLES = 10



# -- the service --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    # No per-station rate limit in the way of the fuzz (429 is documented, but would hide the route's logic).
    with running_service(tmp_path_factory.mktemp("fuzz"), rate_limit_per_s=1e6, rate_limit_burst=1_000_000) as svc:
        for i in range(3):  # stored scans (they alarm with the tiny model) for the {scan_id} routes to find
            r = post_png(svc, png_bytes(100 + i), f"fuzz-bag-{i}")
            assert r.status_code == 200, r.text
        yield svc


@pytest.fixture(scope="module")
def scan_ids(service: Service) -> list[int]:
    r = service.client.get("/v1/scans", params={"limit": 10}, headers=service.auth("supervisor"))
    assert r.status_code == 200, r.text
    return sorted(item["id"] for item in r.json()["items"])


@pytest.fixture(scope="module")
def api_schema(service: Service) -> Any:
    """The OpenAPI description as the service serves it (any role may read it)."""
    r = service.client.get("/openapi.json", headers=service.auth("station"))
    assert r.status_code == 200, r.text
    return schemathesis.openapi.from_dict(r.json())


def _session(service: Service) -> tuple[str, str]:
    """A fresh supervisor UI session: (cookie header value, CSRF token). Fresh per case: a fuzzed
    POST /logout ends the one it was sent with."""
    auth = service.ctx.auth
    principal = auth.principal_for_key(service.keys["supervisor"])
    token, csrf = auth.create_session(principal)
    return f"{service.settings.session_cookie_name}={token}", csrf


def _send(service: Service, case: Any, who: str) -> Any:
    """Send `case` as `who`, encoded by `requests` as schemathesis would put it on the wire; no redirects
    followed (a 303 is the answer under test)."""
    kwargs = case.as_transport_kwargs(base_url="http://testserver")
    headers = dict(kwargs.get("headers") or {})
    if who == "supervisor-session":
        headers["Cookie"], headers["X-CSRF-Token"] = _session(service)
    else:
        headers["Authorization"] = f"Bearer {service.keys[who]}"
    prepared = requests.Request(
        kwargs["method"], kwargs["url"], headers=headers, params=kwargs.get("params"), data=kwargs.get("data"),
        files=kwargs.get("files"), json=kwargs.get("json"),
    ).prepare()
    body = prepared.body.encode() if isinstance(prepared.body, str) else prepared.body
    service.client.cookies.clear()  # no cookie carried from one case to the next (GET /login sets one)
    return service.client.request(prepared.method, prepared.url, content=body, headers=dict(prepared.headers),
                                  follow_redirects=False)


def _unexpected_failures(case: Any, response: Any) -> list[str]:
    found = []
    for check in CHECKS:
        try:
            case.validate_response(response, checks=[check])
        except FailureGroup as group:
            found += [f"{check.__name__}: {failure.title}: {str(failure.message)[:300]}" for failure in group.exceptions]
    return found


def _assert_healthy(service: Service) -> None:
    assert service.client.get("/healthz").status_code == 200
    ready = service.client.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert service.client.get("/v1/me", headers=service.auth("station")).status_code == 200


def _fuzz_operation(service: Service, operation: Any, who: str, scan_ids: list[int], mode: GenerationMode,
                    max_examples: int) -> None:
    @settings(max_examples=max_examples, deadline=None, derandomize=True, database=None,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode), data=st.data())
    def run(case: Any, data: st.DataObject) -> None:
        # Half the cases aim at stored scans: a random id in 1..2**63-1 is almost never one.
        if "scan_id" in (case.path_parameters or {}) and data.draw(st.booleans(), label="stored scan"):
            case.path_parameters["scan_id"] = data.draw(st.sampled_from(scan_ids), label="scan_id")
        try:
            response = _send(service, case, who)
        except Exception as exc:  # raised out of the app: an unhandled error (the TestClient re-raises)
            raise AssertionError(f"{case.method} {case.formatted_path} as {who} raised out of the app: {exc!r}") from exc
        problems = _unexpected_failures(case, response)
        sent = response.request
        assert not problems, (f"{case.method} {case.formatted_path} as {who} -> {response.status_code} "
                              f"{response.text[:300]!r}\nsent: {sent.url} {sent.headers.get('content-type')!r} "
                              f"{sent.content[:300]!r}\n" + "\n".join(problems))

    run()


@pytest.mark.parametrize("who", ROLES)
def test_fuzz_every_operation(service: Service, api_schema: Any, scan_ids: list[int], who: str) -> None:
    logging.disable(logging.ERROR)  # the access log of a few thousand requests
    try:
        failures: list[str] = []
        operations = [result.ok() for result in api_schema.get_all_operations()]
        assert len(operations) >= 20, [op.label for op in operations]
        for operation in operations:
            modes = [(GenerationMode.POSITIVE, POSITIVE_EXAMPLES)]
            if any(True for _ in operation.iter_parameters()) or operation.body:  # else nothing can be invalid
                modes.append((GenerationMode.NEGATIVE, NEGATIVE_EXAMPLES))
            for mode, n in modes:
                try:
                    _fuzz_operation(service, operation, who, scan_ids, mode, n)
                except AssertionError as exc:
                    failures.append(f"[{operation.label} / {who} / {mode.value}] {exc}")
            try:
                _assert_healthy(service)
            except AssertionError as exc:
                failures.append(f"[{operation.label} / {who}] service unhealthy afterwards: {exc}")
        assert not failures, "\n\n".join(failures)
    finally:
        logging.disable(logging.NOTSET)


# -- real faults ------------------------------------------------------------------------------------------


def test_review_form_with_a_huge_number_in_seen_is_refused_not_a_server_error(service: Service,
                                                                              scan_ids: list[int]) -> None:
    # Found (5xx, raised out of the app): POST /ui/bags/{id}/review parsed the `seen` form field with
    # `int()` after checking it only against ^\d+:\d+(,\d+:\d+)*$ and max_length=20000. A number of more
    # than 4300 digits made `int()` raise ValueError (Python's integer-string limit), so a tampered `seen`
    # got a 500. It is refused like any malformed field: 422 (the UI's "Invalid request" page), since each
    # number is now at most 19 digits (ids are signed 64-bit).
    reviews_url = f"/v1/scans/{scan_ids[0]}/reviews"
    before = len(service.client.get(reviews_url, headers=service.auth("supervisor")).json())
    cookie, csrf = _session(service)
    service.client.cookies.clear()
    try:
        r = service.client.post(f"/ui/bags/{scan_ids[0]}/review", headers={"Cookie": cookie},
                                data={"verdict": "cleared", "csrf_token": csrf, "seen": f"{scan_ids[0]}:" + "9" * 5000},
                                follow_redirects=False)
    except ValueError as exc:
        pytest.fail(f"the review form raised out of the app (a 500 in service): {exc}")
    assert r.status_code in (409, 422), r.text[:300]
    assert len(service.client.get(reviews_url, headers=service.auth("supervisor")).json()) == before  # nothing recorded


@pytest.mark.parametrize(
    ("method", "path", "request_kwargs"),
    [
        ("GET", "/v1/scans", {"params": {"limit": 0}}),
        ("GET", "/v1/scans/{scan_id}", {"path_parameters": {"scan_id": 0}}),
        ("POST", "/v1/scans/{scan_id}/reviews", {"path_parameters": {"scan_id": 1}, "json": {"verdict": "maybe"}}),
        ("GET", "/v1/seizures", {"params": {"download": "perhaps"}}),
    ],
    ids=["list-limit-0", "scan-id-0", "review-bad-verdict", "seizures-bad-bool"],
)
def test_422_body_matches_documented_schema(service: Service, api_schema: Any, method: str, path: str,
                                            request_kwargs: dict[str, Any]) -> None:
    # Found (the response did not match the OpenAPI): the app's RequestValidationError handler (edge/app.py
    # `_validation_error`) answers {"detail": "<one sentence>", "errors": [{loc, msg, type}, ...]}, but every
    # route whose 422 is FastAPI's default documents `HTTPValidationError`, {"detail": [{loc, msg, type}]}:
    # `detail` is a string where the schema said an array, so a client generated from /openapi.json failed
    # to read any 422. The description now gives the real shape (edge/app.py `_describe_request_errors`).
    operation = api_schema[path][method]
    path_parameters = request_kwargs.get("path_parameters")
    r = service.client.request(method, path.format(**path_parameters) if path_parameters else path,
                               params=request_kwargs.get("params"), json=request_kwargs.get("json"),
                               headers=service.auth("supervisor"))
    assert r.status_code == 422, r.text
    case = operation.Case(path_parameters=path_parameters, query=request_kwargs.get("params"),
                          **({"body": request_kwargs["json"], "media_type": "application/json"}
                             if "json" in request_kwargs else {}))
    try:
        case.validate_response(r, checks=[response_schema_conformance])
    except FailureGroup as group:
        pytest.fail(f"422 body {r.json()!r} does not match the documented schema: "
                    + "; ".join(f"{f.title}: {str(f.message)[:200]}" for f in group.exceptions))


# -- answers the description once left out ------------------------------------------------------------


def _documented_statuses(api_schema: Any, method: str, template: str) -> set[str]:
    return set(api_schema.raw_schema["paths"][template][method.lower()]["responses"])


@pytest.mark.parametrize(
    ("caller", "method", "template", "path", "request_kwargs", "status"),
    [
        pytest.param("none", "GET", "/ui/queue", "/ui/queue", {}, 303, id="queue-no-session-303"),
        pytest.param("none", "GET", "/ui/seizures", "/ui/seizures", {}, 303, id="seizures-no-session-303"),
        pytest.param("session", "GET", "/ui/bags/{scan_id}", "/ui/bags/999999", {}, 404,
                     id="bag-page-no-scan-404"),
        pytest.param("none", "POST", "/ui/bags/{scan_id}/review", "/ui/bags/{first}/review",
                     {"data": {"verdict": "cleared"}}, 401, id="review-form-no-session-401"),
        pytest.param("session", "POST", "/ui/bags/{scan_id}/review", "/ui/bags/{first}/review",
                     {"data": {"verdict": "cleared", "seen": "999999:0"}}, 409,
                     id="review-form-bag-changed-409"),
        pytest.param("none", "POST", "/logout", "/logout", {}, 401, id="logout-no-session-401"),
        pytest.param("none", "POST", "/login", "/login", {"data": {"username": "sup", "password": "x" * 8}}, 403,
                     id="login-without-form-token-403"),
        pytest.param("station", "POST", "/v1/scans", "/v1/scans",
                     {"content": b"--x\r\nnot a part", "headers": {"Content-Type": "multipart/form-data; boundary=x"}},
                     400, id="scan-malformed-multipart-400"),
        pytest.param("supervisor", "POST", "/v1/scans/{scan_id}/reviews", "/v1/scans/{first}/reviews",
                     {"content": b'{"verdict": "cleared", "note": "\xff"}', "headers": {"Content-Type": "application/json"}},
                     400, id="review-json-not-utf8-400"),
    ],
)
def test_status_is_documented(service: Service, api_schema: Any, scan_ids: list[int], caller: str, method: str,
                              template: str, path: str, request_kwargs: dict[str, Any], status: int) -> None:
    headers = dict(request_kwargs.get("headers", {}))
    data = dict(request_kwargs.get("data", {}))
    if caller == "session":
        headers["Cookie"], csrf = _session(service)
        data["csrf_token"] = csrf
    elif caller != "none":
        headers.update(service.auth(caller))
    service.client.cookies.clear()
    r = service.client.request(method, path.format(first=scan_ids[0]), headers=headers, data=data or None,
                               content=request_kwargs.get("content"), follow_redirects=False)
    assert r.status_code == status, r.text[:300]  # the behaviour itself is right; only its documentation lacks
    assert str(status) in _documented_statuses(api_schema, method, template)
