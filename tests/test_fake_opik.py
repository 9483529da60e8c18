"""The fake Opik itself, through real HTTP with urllib: each endpoint with a valid and an invalid
body, the auth and device-token refusals, how updates merge, arrival order, scripted answers."""

import gzip
import json
import socket
import threading
import urllib.error
import urllib.request

import pytest

from tests import cost_intelligence as ci
from tests.conftest import wait_for
from tests.cost_intelligence import Received
from tests.fake_opik import API_KEY, DEVICE_TOKEN, NOT_JSON, WEB_PAGE, WORKSPACE, Answer, FakeOpik, Slow

T1, T2, T3 = (f"01a20b41-ef23-7d25-a352-80856a6255f{n}" for n in "123")
S1, S2, S3 = (f"01a20b41-ef23-7d4e-9d6b-85191069cb2{n}" for n in "123")
V4 = "7c9e6679-7425-40de-944b-e07fc1f90ae7"  # a UUID, not version 7
START = "2026-11-24T01:53:20.163000Z"
LATER = "2026-11-24T01:53:21.500000Z"
PROJECT = "claude-code"


def trace(trace_id: str = T1, **fields) -> dict:
    return {"id": trace_id, "project_name": PROJECT, "name": "turn", "start_time": START,
            "last_updated_at": START, **fields}


def span(span_id: str = S1, trace_id: str = T1, **fields) -> dict:
    return {"id": span_id, "project_name": PROJECT, "trace_id": trace_id, "name": "main", "type": "llm",
            "start_time": START, "last_updated_at": START, **fields}


def send(fake: FakeOpik, method: str, route: str, body: object = None, *, raw: bytes | None = None,
         headers: dict | None = None, auth: str | None = API_KEY, timeout: float = 10) -> tuple[int, dict, bytes]:
    """(status, headers, body) of one request to the fake, gzip JSON with our headers unless told."""
    sent = {"Content-Type": "application/json", "Content-Encoding": "gzip", "Comet-Workspace": WORKSPACE,
            **({"Authorization": auth} if auth else {}), **(headers or {})}
    data = raw if raw is not None else gzip.compress(json.dumps(body).encode())
    request = urllib.request.Request(fake.url + route, data=data, headers=sent, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, dict(error.headers), error.read()


@pytest.fixture
def opik():
    with FakeOpik() as fake:
        yield fake


@pytest.fixture
def device():
    with FakeOpik(api_key=None, device_token=DEVICE_TOKEN) as fake:
        yield fake


# --- each endpoint, valid -----------------------------------------------------------------------

def test_batch_creates_answer_204_without_a_body_and_store_every_record(opik):
    assert send(opik, "POST", "/v1/private/traces/batch", {"traces": [trace(T1), trace(T2)]})[::2] == (204, b"")
    assert send(opik, "POST", "/v1/private/spans/batch", {"spans": [span(S1), span(S2, T2)]})[::2] == (204, b"")
    assert set(opik.traces) == {T1, T2} and set(opik.spans) == {S1, S2}
    assert opik.spans[S2] == span(S2, T2) and opik.ids() == {T1, T2, S1, S2}
    assert [(r.method, r.path, r.field, r.ids, r.status, r.stored) for r in opik.requests] == [
        ("POST", "/v1/private/traces/batch", "traces", [T1, T2], 204, True),
        ("POST", "/v1/private/spans/batch", "spans", [S1, S2], 204, True)]
    assert opik.accepted_count() == 4 and opik.violations == []


def test_a_single_trace_create_answers_201_with_its_location_and_the_same_id_again_409(opik):
    status, headers, body = send(opik, "POST", "/v1/private/traces", trace(T1))
    assert (status, body, headers["Location"]) == (201, b"", f"{opik.url}/v1/private/traces/{T1}")
    again = send(opik, "POST", "/v1/private/traces", trace(T1, name="changed"))
    assert (again[0], json.loads(again[2])) == (409, {"errors": ["Trace already exists"]})
    assert opik.traces[T1]["name"] == "turn" and opik.received[T1] == [trace(T1)]
    assert [r.stored for r in opik.requests] == [True, False] and opik.violations == []


def test_a_trace_update_answers_204_and_replaces_the_fields_it_holds(opik):
    send(opik, "POST", "/v1/private/traces", trace(T1, metadata={"cc": {"a": 1}, "keep": True}, tags=["x"]))
    update = {"project_name": PROJECT, "end_time": LATER, "metadata": {"cipx": {"session": {}}}, "tags": ["y"],
              "name": "  "}
    assert send(opik, "PATCH", f"/v1/private/traces/{T1}", update)[::2] == (204, b"")
    assert opik.traces[T1] == trace(T1, end_time=LATER, metadata={"cipx": {"session": {}}}, tags=["y"])
    assert opik.ids() == {T1} and opik.violations == []  # metadata replaced whole; a blank name changes nothing


def test_a_span_update_by_id_answers_204(opik):
    send(opik, "POST", "/v1/private/spans/batch", {"spans": [span(S1, usage={"input_tokens": 3})]})
    update = {"project_name": PROJECT, "trace_id": T1, "usage": {"output_tokens": 9}, "model": ""}
    assert send(opik, "PATCH", f"/v1/private/spans/{S1}", update)[::2] == (204, b"")
    assert opik.spans[S1] == span(S1, usage={"output_tokens": 9}) and opik.violations == []


def test_a_span_batch_update_answers_204_updates_the_stored_spans_and_skips_unknown_ids(opik):
    send(opik, "POST", "/v1/private/spans/batch", {"spans": [span(S1, tags=["a"]), span(S2, tags=["b"])]})
    update = {"ids": [S1, S3], "update": {"trace_id": T1, "end_time": LATER, "tags": ["c"]}, "merge_tags": True}
    assert send(opik, "PATCH", "/v1/private/spans/batch", update)[::2] == (204, b"")
    assert opik.spans[S1] == span(S1, tags=["a", "c"], end_time=LATER)
    assert opik.spans[S2] == span(S2, tags=["b"]) and S3 not in opik.spans
    send(opik, "PATCH", "/v1/private/spans/batch", {"ids": [S2], "update": {"trace_id": T1, "tags": ["d"]}})
    assert opik.spans[S2]["tags"] == ["d"] and opik.violations == []  # without merge_tags, replaced


# --- each endpoint, invalid ---------------------------------------------------------------------

INVALID = [
    ("POST", "/v1/private/traces/batch", {"traces": [trace(T1, start_time=None)]}, "start_time"),
    ("POST", "/v1/private/traces/batch", {"traces": []}, "fewer than 1 items"),
    ("POST", "/v1/private/spans/batch", {"spans": [span(S1, type="chain")]}, "chain"),
    ("POST", "/v1/private/spans/batch", {"spans": [span(S1), span(S1)]}, "duplicate id"),
    ("POST", "/v1/private/traces", trace(T1, start_time="2026-11-24 01:53:20"), "start_time"),
    ("POST", "/v1/private/traces", trace(T1, surprise=1), "surprise"),
    ("PATCH", f"/v1/private/traces/{T1}", {"project_name": PROJECT, "start_time": START}, "start_time"),
    ("PATCH", f"/v1/private/traces/{T1}", {"project_name": " ", "tags": "x"}, "tags"),
    ("PATCH", "/v1/private/spans/batch", {"ids": [S1], "update": {"end_time": LATER}}, "trace_id"),
    ("PATCH", "/v1/private/spans/batch", {"ids": [V4], "update": {"trace_id": T1}}, "UUIDv7"),
    ("PATCH", f"/v1/private/spans/{S1}", {"trace_id": T1, "usage": {"input_tokens": 2**31}}, "usage"),
]


@pytest.mark.parametrize(("method", "route", "body", "named"), INVALID)
def test_a_body_that_breaks_the_schema_or_our_rules_is_a_422_violation_and_nothing_is_stored(
        opik, method, route, body, named):
    status, headers, answer = send(opik, method, route, body)
    errors = json.loads(answer)["errors"]
    assert (status, headers["Content-Type"]) == (422, "application/json")
    assert any(named in error for error in errors), errors
    assert opik.violations == errors and opik.arrivals() == []
    assert not opik.traces and not opik.spans and not opik.received


def test_a_body_that_is_not_gzip_json_is_400_with_dropwizards_error_body(opik):
    status, _, answer = send(opik, "POST", "/v1/private/spans/batch", raw=b'{"spans": [')
    assert status == 400 and json.loads(answer)["code"] == 400
    assert json.loads(answer)["message"].startswith("Unable to process JSON")
    plain = send(opik, "POST", "/v1/private/traces", raw=json.dumps(trace()).encode(), headers={"Content-Encoding": ""})
    assert plain[0] == 400 and "body is not gzip-encoded" in opik.violations
    assert not opik.traces


def test_an_update_path_id_that_is_not_a_uuidv7_is_400_and_a_path_the_product_does_not_use_404(opik):
    status, _, answer = send(opik, "PATCH", f"/v1/private/traces/{V4}", {"project_name": PROJECT})
    assert (status, json.loads(answer)) == (400, {"code": 400, "message": "Invalid UUID for id",
                                                  "details": "Trace id must be a version 7 UUID"})
    for method, route in [("POST", "/v1/private/spans"), ("PATCH", "/v1/private/traces/batch"),
                          ("POST", "/v1/private/traces/not-a-uuid"), ("POST", "/v1/private/datasets")]:
        assert send(opik, method, route, {"x": 1})[0] == 404, route
    assert opik.violations.count("unexpected path") == 4


def test_workspace_and_credentials_are_checked_as_opiks_auth_filter_does(opik):
    cases = [({"Comet-Workspace": ""}, API_KEY, 403, "Workspace name should be provided"),
             ({}, None, 401, "API key should be provided"),
             ({}, f"Bearer {API_KEY}", 401, None), ({"Comet-Workspace": "other"}, API_KEY, 401, None)]
    for headers, auth, code, message in cases:
        status, _, answer = send(opik, "POST", "/v1/private/traces", trace(), headers=headers, auth=auth)
        assert (status, json.loads(answer)["code"]) == (code, code)
        assert message is None or json.loads(answer)["message"] == message
    assert len(opik.violations) == 4 and not opik.traces


# --- device token ---------------------------------------------------------------------------------

def test_a_device_token_writes_through_its_four_endpoints_only(device):
    calls = [("POST", "/v1/private/traces", trace(T1), 201),
             ("POST", "/v1/private/spans/batch", {"spans": [span(S1)]}, 204),
             ("PATCH", f"/v1/private/traces/{T1}", {"project_name": PROJECT, "end_time": LATER}, 204),
             ("PATCH", "/v1/private/spans/batch", {"ids": [S1], "update": {"trace_id": T1, "end_time": LATER}}, 204)]
    for method, route, body, code in calls:
        assert send(device, method, route, body, auth=DEVICE_TOKEN)[0] == code, route
    refused = [("POST", "/v1/private/traces/batch", {"traces": [trace(T2)]}),
               ("PATCH", f"/v1/private/spans/{S1}", {"trace_id": T1, "name": "renamed"})]
    for method, route, body in refused:
        status, headers, answer = send(device, method, route, body, auth=DEVICE_TOKEN)
        assert (status, headers["Content-Type"]) == (403, "application/json"), route
        assert json.loads(answer) == {"code": 403, "message": "User is not allowed to access workspace"}
    assert device.violations == []  # a refusal a shipper must handle, not a broken request
    assert set(device.traces) == {T1} and device.spans[S1]["name"] == "main"
    assert [r.status for r in device.requests] == [201, 204, 204, 204, 403, 403]
    assert send(device, "POST", "/v1/private/traces/batch", {"traces": [trace(T2)]}, auth=API_KEY)[0] == 401


def test_a_device_token_beside_an_api_key_leaves_the_key_its_full_access():
    with FakeOpik(device_token=DEVICE_TOKEN) as fake:
        assert send(fake, "POST", "/v1/private/traces/batch", {"traces": [trace(T1)]}, auth=DEVICE_TOKEN)[0] == 403
        assert send(fake, "POST", "/v1/private/traces/batch", {"traces": [trace(T1)]}, auth=API_KEY)[0] == 204
        assert send(fake, "POST", "/v1/private/traces", trace(T2), auth=DEVICE_TOKEN)[0] == 201
        assert set(fake.traces) == {T1, T2} and fake.violations == []


def test_a_refused_request_still_has_its_body_checked(device):
    status, _, _ = send(device, "POST", "/v1/private/traces/batch", {"traces": [trace(T1, start_time=None)]},
                        auth=DEVICE_TOKEN)
    assert status == 403 and any("start_time" in v for v in device.violations)


# --- how updates merge ------------------------------------------------------------------------------

def test_an_update_must_name_the_records_project_and_a_span_update_its_trace_and_parent(opik):
    send(opik, "POST", "/v1/private/traces", trace(T1))
    send(opik, "POST", "/v1/private/spans/batch", {"spans": [span(S1, parent_span_id=S2)]})
    conflicts = [
        (f"/v1/private/traces/{T1}", {"end_time": LATER},
         "Project name and workspace name do not match the existing trace"),  # no project_name: Default Project
        (f"/v1/private/spans/{S1}", {"project_name": PROJECT, "trace_id": T1, "end_time": LATER},
         "parent_span_id does not match the existing span"),
        (f"/v1/private/spans/{S1}", {"project_name": PROJECT, "trace_id": T2, "parent_span_id": S2},
         "trace_id does not match the existing span"),
    ]
    for route, update, message in conflicts:
        status, _, answer = send(opik, "PATCH", route, update)
        assert (status, json.loads(answer)) == (409, {"errors": [message]}), route
    assert "end_time" not in opik.traces[T1] and opik.spans[S1] == span(S1, parent_span_id=S2)
    assert opik.violations == [] and [r.stored for r in opik.requests] == [True, True, False, False, False]


def test_an_update_before_the_create_is_kept_and_its_fields_win_when_the_trace_arrives(opik):
    update = {"project_name": PROJECT, "metadata": {"from": "patch"}, "end_time": LATER}
    assert send(opik, "PATCH", f"/v1/private/traces/{T1}", update)[0] == 204
    assert opik.traces[T1] == {"id": T1, **update} and opik.ids() == set()  # partial: no start_time yet
    assert send(opik, "POST", "/v1/private/traces", trace(T1, metadata={"from": "create"}))[0] == 201
    assert opik.traces[T1] == trace(T1, metadata={"from": "patch"}, end_time=LATER)
    assert send(opik, "POST", "/v1/private/traces", trace(T1))[0] == 409  # now it exists


def test_a_batch_create_does_not_complete_a_span_an_update_made_first(opik):
    update = {"project_name": PROJECT, "trace_id": T1, "end_time": LATER}
    assert send(opik, "PATCH", f"/v1/private/spans/{S1}", update)[0] == 204
    assert send(opik, "POST", "/v1/private/spans/batch", {"spans": [span(S1)]})[0] == 204
    assert opik.spans[S1] == {"id": S1, **update} and opik.ids() == {S1}  # Opik reads the newer, partial row


def test_the_scripted_refusals_apply_to_the_ids_of_updates_too(opik):
    send(opik, "POST", "/v1/private/spans/batch", {"spans": [span(S1), span(S2)]})
    opik.reject_ids[T1] = "metadata: too large"
    opik.answer_ids[S2] = Answer(500, body=b"boom")
    patched = send(opik, "PATCH", f"/v1/private/traces/{T1}", {"project_name": PROJECT, "end_time": LATER})
    assert (patched[0], json.loads(patched[2])) == (400, {"errors": ["metadata: too large"]})
    batch = {"ids": [S1, S2], "update": {"trace_id": T1, "end_time": LATER}}
    assert send(opik, "PATCH", "/v1/private/spans/batch", batch)[::2] == (500, b"boom")
    assert T1 not in opik.traces and "end_time" not in opik.spans[S1] and len(opik.arrivals()) == 1


def test_an_update_outranks_any_create_version_a_client_sends_later(opik):
    send(opik, "POST", "/v1/private/spans/batch", {"spans": [span(S1)]})
    send(opik, "POST", "/v1/private/spans/batch", {"spans": [span(S1, name="newer", last_updated_at=LATER)]})
    send(opik, "POST", "/v1/private/spans/batch", {"spans": [span(S1, name="older")]})
    assert opik.spans[S1]["name"] == "newer"  # versions rank by last_updated_at, not arrival
    send(opik, "PATCH", "/v1/private/spans/batch", {"ids": [S1], "update": {"trace_id": T1, "name": "patched"}})
    send(opik, "POST", "/v1/private/spans/batch", {"spans": [span(S1, name="re-sent", last_updated_at=LATER)]})
    assert opik.spans[S1]["name"] == "patched"  # Opik stamped the update with its own, later, clock
    assert [v["name"] for v in opik.received[S1]] == ["main", "newer", "older", "re-sent"]


# --- arrival order ------------------------------------------------------------------------------------

def test_arrivals_are_the_stored_requests_in_order_as_cost_intelligence_reads_them():
    identity = {"cipx": {"session": {"schema_version": 2, "identity": {"user_uuid": "u-1"}}}}
    call = {"cipx": {"call": {"model": "claude-haiku-4-5", "usage": {"input_tokens": 10}}, "blocks": []}}
    with FakeOpik(base_path="/opik/api") as fake:
        send(fake, "POST", "/v1/private/traces", trace(T1))
        send(fake, "POST", "/v1/private/traces", trace(T1))  # 409: not stored
        send(fake, "POST", "/v1/private/spans/batch", {"spans": [span(S1, metadata=call)]})
        fake.script(Answer(500, body=b"boom"))
        send(fake, "PATCH", f"/v1/private/traces/{T1}", {"project_name": PROJECT, "metadata": {}})  # 500
        send(fake, "PATCH", f"/v1/private/traces/{T1}", {"project_name": PROJECT, "metadata": identity})
        send(fake, "PATCH", "/v1/private/spans/batch", {"ids": [S1], "update": {"trace_id": T1, "metadata": {}}})
        assert fake.arrivals() == [
            Received("POST", "/v1/private/traces", trace(T1)),
            Received("POST", "/v1/private/spans/batch", {"spans": [span(S1, metadata=call)]}),
            Received("PATCH", f"/v1/private/traces/{T1}", {"project_name": PROJECT, "metadata": identity}),
            Received("PATCH", "/v1/private/spans/batch", {"ids": [S1], "update": {"trace_id": T1, "metadata": {}}})]
        assert [r.status for r in fake.requests] == [201, 409, 204, 500, 204, 204]
        ingested = ci.ingest(fake.arrivals())
    assert set(ingested.spends) == {S1} and ingested.identities[T1].user_uuid == "u-1"
    assert fake.spans[S1]["metadata"] == {}  # Opik's span holds the update; Cost Intelligence kept the create


def test_requests_from_many_threads_are_all_kept_once_in_the_order_they_were_stored(opik):
    bodies = [{"spans": [span(f"01a20b41-ef23-7d4e-9d6b-8519106{n:05d}", T1)]} for n in range(40)]
    threads = [threading.Thread(target=send, args=(opik, "POST", "/v1/private/spans/batch", b)) for b in bodies]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    arrived = [a.body for a in opik.arrivals()]
    assert sorted(arrived, key=json.dumps) == sorted(bodies, key=json.dumps)
    assert arrived == [r.body for r in opik.requests] and opik.violations == []


# --- answers a shipper must not take as stored -----------------------------------------------------

@pytest.mark.parametrize("answer", [WEB_PAGE, NOT_JSON])
def test_a_scripted_200_that_is_not_opiks_answer_stores_nothing(opik, answer):
    opik.fail_with = answer
    for _ in range(2):
        status, headers, body = send(opik, "POST", "/v1/private/spans/batch", {"spans": [span(S1)]})
        assert (status, headers["Content-Type"], body) == (200, answer.headers["Content-Type"], answer.body)
    assert not opik.spans and opik.ids() == set() and opik.arrivals() == [] and opik.accepted_count() == 0
    opik.fail_with = None
    assert send(opik, "POST", "/v1/private/spans/batch", {"spans": [span(S1)]})[0] == 204 and S1 in opik.spans


def test_a_slow_opik_lets_requests_above_n_records_time_out_and_keeps_nothing_of_them(opik):
    opik.slow = Slow(above=2, delay_s=3.0)
    three = {"spans": [span(S1), span(S2), span(S3)]}
    with pytest.raises((TimeoutError, socket.timeout, urllib.error.URLError)):
        send(opik, "POST", "/v1/private/spans/batch", three, timeout=0.5)
    assert send(opik, "POST", "/v1/private/spans/batch", {"spans": [span(S1), span(S2)]}, timeout=2.5)[0] == 204
    wait_for(lambda: len(opik.requests) == 2, what="the held request answered")
    assert [(len(r.ids), r.status, r.stored) for r in opik.requests] == [(2, 204, True), (3, 504, False)]
    assert set(opik.spans) == {S1, S2} and opik.violations == []


def test_a_slow_opik_may_store_late_what_the_client_gave_up_on(opik):
    opik.slow = Slow(above=0, delay_s=1.0, stored=True)
    with pytest.raises((TimeoutError, socket.timeout, urllib.error.URLError)):
        send(opik, "POST", "/v1/private/traces", trace(T1), timeout=0.2)
    wait_for(lambda: T1 in opik.traces, what="the trace stored late")
    assert [(r.status, r.stored) for r in opik.requests] == [(201, True)]


def test_going_down_drops_a_held_request_unanswered():
    with FakeOpik() as fake:
        fake.slow = Slow(above=0, delay_s=60.0, stored=True)
        outcome: list = []

        def call() -> None:
            try:
                outcome.append(send(fake, "POST", "/v1/private/spans/batch", {"spans": [span(S1)]}, timeout=30))
            except (OSError, urllib.error.URLError) as exc:
                outcome.append(exc)

        thread = threading.Thread(target=call)
        thread.start()
        wait_for(lambda: fake.held == 1, what="the request held")
        fake.down()
        thread.join(timeout=20)
        assert not thread.is_alive() and isinstance(outcome[0], Exception)
        assert fake.requests == [] and not fake.spans and fake.held == 0
