"""Second review of the supervisors' side and access control: what a verdict form may reach, two supervisors
on one bag, and logins that race an admin's password reset or probe for user names.

Each test asserts the behaviour the design promises and failed on the code it was written against."""

from __future__ import annotations

import hashlib
import re
from typing import Any

import pytest
from argon2 import PasswordHasher
from fastapi.testclient import TestClient

from edge.auth import Auth
from edge.seizures import collect_seizures
from edge_support import ADMIN_PASSWORD, SUPERVISOR_PASSWORD, running_service, ui_login

NEW_PASSWORD = "a brand new long password"
FAST_HASHER = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)


@pytest.fixture()
def service(tmp_path):
    with running_service(tmp_path) as svc:
        yield svc




def _record(store, bag_id: str, *, alarm: bool, view: str = "top", classes: tuple[str, ...] = ("drug_package",)) -> Any:
    """A scan written straight into the store (no model run): alarmed with one box per class, or clear."""
    sha = hashlib.sha256(f"st1|{bag_id}|{view}".encode()).hexdigest()
    detections = [{"class": c, "class_id": 0, "score": 0.9, "box_xyxy": [10.0, 20.0, 30.0, 60.0], "alarm": True}
                  for c in classes] if alarm else []
    record, _created = store.record_scan(
        station="st1", lane="1", bag_id=bag_id, view=view, image_sha256=sha, media_type="image/png", width=80,
        height=96, result={"detections": detections}, model_name="tiny-test", model_version="0.0.1", alarm=alarm,
        alarm_classes=list(classes) if alarm else [],
    )
    return record


def _submit_review(client, page: str, verdict: str, note: str = ""):
    """Press a verdict button of the bag page's review form, as a browser does: every field of that form
    (hidden ones included), the note, and the pressed button's name and value."""
    form = re.search(r'<form method="post" action="(/ui/bags/\d+/review)"[^>]*>(.*?)</form>', page, re.S)
    assert form is not None, "the bag page has no review form"
    action, inner = form.group(1), form.group(2)
    data: dict[str, str] = {}
    for tag in re.findall(r"<input[^>]*>", inner):
        name = re.search(r'name="([^"]*)"', tag)
        value = re.search(r'value="([^"]*)"', tag)
        if name and 'type="hidden"' in tag:
            data[name.group(1)] = value.group(1) if value else ""
    data["note"] = note
    data["verdict"] = verdict
    return client.post(action, data=data, follow_redirects=False)


class _HookedHasher:
    """Delegates to a real PasswordHasher; lets a test run code at a chosen step and counts the argon2 work."""

    def __init__(self, inner: PasswordHasher) -> None:
        self.inner = inner
        self.ops: list[str] = []
        self.after_verify = None  # called once after a successful verify
        self.before_hash = None  # called once before a hash
        self.needs_rehash = None  # forces check_needs_rehash's answer when set

    def hash(self, password, *args, **kwargs):
        self.ops.append("hash")
        hook, self.before_hash = self.before_hash, None
        if hook is not None:
            hook()
        return self.inner.hash(password, *args, **kwargs)

    def verify(self, stored, password):
        self.ops.append("verify")
        ok = self.inner.verify(stored, password)
        hook, self.after_verify = self.after_verify, None
        if hook is not None:
            hook()
        return ok

    def check_needs_rehash(self, stored):
        return self.inner.check_needs_rehash(stored) if self.needs_rehash is None else self.needs_rehash


# -- verdicts: only on what the page showed ----------------------------------------------------------------


def test_a_verdict_does_not_reach_a_view_that_arrived_after_the_page_was_shown(service):
    """A supervisor opens a bag (its top view: a drug package) and clears it; meanwhile the station sent the
    side view, which alarmed on a gun. The supervisor never saw that view, yet "Clear" cleared it too: the
    gun left the queue unseen. A verdict must go only on the views the page showed (or be refused, asking
    for a reload), never on a view that arrived after it."""
    store = service.ctx.store
    top = _record(store, "bag-late-view", alarm=True, view="top")
    assert ui_login(service.client).status_code == 303
    page = service.client.get(f"/ui/bags/{top.id}").text
    assert "View top" in page
    side = _record(store, "bag-late-view", alarm=True, view="side", classes=("gun",))  # arrives after the page
    r = _submit_review(service.client, page, "cleared", note="toothpaste")
    assert r.status_code in (303, 409), r.text
    assert store.get_scan(side.id).verdict is None, "the unseen gun view was cleared"
    queue = service.client.get("/ui/queue").text
    assert "bag-late-view" in queue.split('id="reviewed"')[0], "the bag with the unseen alarm left the queue"


def test_a_stale_bag_page_does_not_silently_overturn_another_supervisors_confirmation(service):
    """Two supervisors open the same unreviewed bag. The admin confirms it (a seizure). The supervisor,
    whose page still says "unreviewed", presses Clear: the confirmation was overturned without either of
    them seeing it, and the seizure vanished from the export. A verdict from a page that did not show the
    bag's current verdict must be refused (a page saying the bag was reviewed meanwhile), not applied."""
    store = service.ctx.store
    bag = _record(store, "bag-two-supervisors", alarm=True)
    sup = service.client
    assert ui_login(sup).status_code == 303
    stale = sup.get(f"/ui/bags/{bag.id}").text
    assert '<b id="verdict">unreviewed</b>' in stale
    adm = TestClient(service.app)  # a second browser, same service
    assert ui_login(adm, "adm", ADMIN_PASSWORD).status_code == 303
    fresh = adm.get(f"/ui/bags/{bag.id}").text
    assert _submit_review(adm, fresh, "confirmed", note="heroin in the lining").status_code == 303
    assert store.get_scan(bag.id).verdict == "confirmed"
    _submit_review(sup, stale, "cleared")
    assert store.get_scan(bag.id).verdict == "confirmed", "a stale page overturned the seizure"
    assert [s["bag_id"] for s in collect_seizures(store)] == ["bag-two-supervisors"]


# -- login and password resets ---------------------------------------------------------------------------


def test_the_first_login_with_an_unknown_name_costs_no_more_than_one_with_a_real_name(service):
    """After the service starts, the first login attempt with a made-up name took about twice as long as
    one with a real name (the "no such user" hash was made on first use, then verified), so a prober learns
    that the name does not exist. An unknown name must cost the same argon2 work as a real one, the first
    time too."""
    auth = service.ctx.auth
    hasher = auth._hasher = _HookedHasher(auth._hasher)
    assert ui_login(service.client, "nobody-by-this-name", "whatever-long").status_code == 401
    unknown = list(hasher.ops)
    hasher.ops.clear()
    assert ui_login(service.client, "sup", "whatever-long").status_code == 401
    known = list(hasher.ops)
    assert unknown == known == ["verify"], (unknown, known)


def test_a_login_racing_a_password_reset_gets_no_session_that_outlives_the_reset(service):
    """An admin resets a supervisor's leaked password (which ends the user's sessions) while someone is
    logging in with the old password: the login checked the old password, the reset ran, and then the login
    got a fresh session that kept working after the reset. A session must not outlive a reset that happened
    before it was made: the login is refused or its session is dead."""
    auth = service.ctx.auth
    hasher = auth._hasher = _HookedHasher(auth._hasher)
    admin = Auth(service.ctx.store, password_hasher=FAST_HASHER)  # `xscreen admin set-password`, another process
    hasher.after_verify = lambda: admin.set_password("sup", NEW_PASSWORD)
    r = ui_login(service.client)  # the old password
    assert admin.verify_password("sup", NEW_PASSWORD) is not None  # the reset took effect
    if r.status_code == 303:
        page = service.client.get("/ui/queue", follow_redirects=False)
        assert page.status_code == 303 and page.headers["location"] == "/login", "the old password's session lives on"
    else:
        assert r.status_code == 401


def test_a_password_reset_during_a_login_rehash_is_not_undone(service):
    """When the argon2 parameters are raised, a login rehashes the user's password. An admin who reset that
    (leaked) password during the rehash saw the reset undone: the login wrote the old password's new hash
    over it, so the old password worked again and the new one did not. The rehash must not overwrite a
    password that changed since it was verified."""
    auth = service.ctx.auth
    hasher = auth._hasher = _HookedHasher(auth._hasher)
    hasher.needs_rehash = True  # the parameters were raised since sup's password was set
    admin = Auth(service.ctx.store, password_hasher=FAST_HASHER)
    hasher.before_hash = lambda: admin.set_password("sup", NEW_PASSWORD)  # lands while the login rehashes
    ui_login(service.client)  # the old password
    assert admin.verify_password("sup", NEW_PASSWORD) is not None, "the admin's reset was undone"
    assert admin.verify_password("sup", SUPERVISOR_PASSWORD) is None, "the leaked password works again"
