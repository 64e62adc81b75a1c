"""The approvals console: its API refuses what it should, and in headless Chromium an approver
signs in, sees a held boto3 call appear without reloading, and releases it with a click (or denies
another with a reason)."""

from __future__ import annotations

import os
import threading
import time

import httpx
import pytest

from tests.test_approval_e2e import BUCKET, console, held, s3, start_gateway, wait_for

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def held_delete(client, key: str):
    """``client`` deletes ``key`` in a thread of its own, a call held for approval: (the thread,
    a dict whose "error" is what ``held`` gives once the call is answered)."""
    result: dict = {}
    t = threading.Thread(target=lambda: result.update(error=held(lambda: client.delete_object(Bucket=BUCKET, Key=key))))
    t.start()
    return t, result


@pytest.fixture(scope="module")
def gw(tmp_path_factory, issuer, moto):
    gateway = start_gateway(tmp_path_factory.mktemp("console"), issuer, moto, approval_hold=20)
    try:
        s3(gateway, issuer.mint("setup")).create_bucket(Bucket=BUCKET)
        yield gateway
    finally:
        gateway.stop()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium package (scripts/test does)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


def base(gw) -> str:
    return f"http://{gw.settings['console_listen']}"


def sign_in(page, gw, issuer) -> None:
    """Open the console and sign in with an approver's token (alice, group sre)."""
    page.goto(base(gw) + "/")
    page.fill("#token", issuer.mint("alice", groups=["sre"]))
    page.click("#login-form button")
    page.wait_for_selector("#app:not([hidden])")


def test_the_api_refuses_strangers_and_cross_site_posts(gw, issuer):
    with httpx.Client(base_url=base(gw), trust_env=False) as c:
        assert "agentgate" in c.get("/").text
        r = c.get("/api/state")
        assert r.status_code == 401 and "sign in" in r.json()["error"]
        r = c.post("/api/login", json={"token": "not-a-token"})
        assert r.status_code == 401 and "neither the local admin token nor an OIDC token" in r.json()["error"]
        r = c.post("/api/login", json={"token": issuer.mint("agent-1")})  # an agent, not an approver
        assert r.status_code == 401 and "agent-1 is not an approver" in r.json()["error"]
        r = c.post("/api/login", json={"token": issuer.mint("alice", groups=["sre"], audience="someone-else")})
        assert r.status_code == 401 and "audience" in r.json()["error"]
        admin = (gw.home / "keys" / "admin.token").read_text().strip()
        r = c.post("/api/login", json={"token": admin})
        assert r.status_code == 200 and r.json()["me"]["sub"] == "agentgate:admin"
        # a console session, not the token, and no cookie (one set for 127.0.0.1 reaches every port)
        session = r.json()["session"]
        assert "set-cookie" not in r.headers and admin not in session and session.startswith("agentgate-console-")
        signed_in = {"authorization": f"Bearer {session}"}
        assert c.get("/api/state").status_code == 401  # nothing rides along by itself
        assert c.get("/api/state", headers=signed_in).json()["me"]["sub"] == "agentgate:admin"
        r = c.post("/api/approvals/ap-000000000000/approve", content=b"reason=x",
                   headers={**signed_in, "content-type": "application/x-www-form-urlencoded"})
        assert r.status_code == 415
        r = c.post("/api/approvals/ap-000000000000/approve", json={}, headers=signed_in)
        assert r.status_code == 404 and "there is no approval" in r.json()["error"]
        r = c.post("/api/approvals/ap-000000000000/deny", json={}, headers=signed_in)
        assert r.status_code in (400, 404)
        forged = session[:-4] + ("AAAA" if not session.endswith("AAAA") else "BBBB")
        r = c.get("/api/state", headers={"authorization": f"Bearer {forged}"})
        assert r.status_code == 401 and "not one this gateway signed" in r.json()["error"]
        c.post("/api/logout", json={}, headers=signed_in)
        r = c.get("/api/state", headers=signed_in)
        assert r.status_code == 401 and "ended" in r.json()["error"]
        alice = c.post("/api/login", json={"token": issuer.mint("alice", groups=["sre"])}).json()
        assert alice["me"]["sub"] == "alice"
        assert c.get("/api/state", headers={"authorization": f"Bearer {alice['session']}"}).status_code == 200
        # bodies: capped before they are read, and JSON nested past the parser's depth is bad input
        r = c.post("/api/login", content=b'{"token": "' + b"x" * 200_000 + b'"}',
                   headers={"content-type": "application/json"})
        assert r.status_code == 413 and "over 65536 bytes" in r.json()["error"]
        r = c.post("/api/login", content=b"[" * 5000 + b"]" * 5000, headers={"content-type": "application/json"})
        assert r.status_code == 400 and "not JSON" in r.json()["error"]
    # the session is the console's: the proxy does not take it
    import urllib.request

    proxied = urllib.request.build_opener(urllib.request.ProxyHandler(
        {"https": f"http://agent:{alice['session']}@127.0.0.1:{gw.port}"}))
    with pytest.raises(OSError) as e:
        proxied.open("https://sts.amazonaws.com/", timeout=10)
    assert "407" in str(e.value)


def test_a_flood_of_asks_does_not_push_earlier_ones_off_the_console(gw, issuer):
    """The console lists the oldest pending approvals first, and says how many it does not show:
    205 newer asks from one agent leave an earlier one from another on the page."""
    import datetime as dt

    from tests.support.approvals import insert_approvals

    now = dt.datetime.now(dt.timezone.utc)
    row = {"kind": "call", "action": "s3:DeleteObject", "status": "pending", "expires": now + dt.timedelta(hours=1)}
    insert_approvals(f"sqlite:///{gw.db_path}", [{**row, "id": "ap-early0000000", "binding_hash": "e" * 64,
                                                  "principal": "agent-early", "requested": now - dt.timedelta(hours=1)}])
    insert_approvals(f"sqlite:///{gw.db_path}", [{**row, "id": f"ap-flood{n:06d}", "binding_hash": f"{n:064d}",
                                                  "principal": "agent-flood", "requested": now + dt.timedelta(seconds=n)}
                                                 for n in range(205)])
    admin = (gw.home / "keys" / "admin.token").read_text().strip()
    with httpx.Client(base_url=base(gw), trust_env=False, headers={"authorization": f"Bearer {admin}"}) as c:
        state = c.get("/api/state").json()
    ids = [a["id"] for a in state["pending"]]
    assert len(ids) == 200 and "ap-early0000000" in ids and state["pending_total"] >= 206
    assert ids.index("ap-early0000000") < ids.index("ap-flood000000")


def test_a_held_boto3_call_is_released_by_a_click(gw, issuer, browser):
    page = browser.new_page()
    try:
        sign_in(page, gw, issuer)
        assert "signed in as alice" in page.inner_text("#me")
        assert page.context.cookies() == []  # nothing a page on another port of this host could be sent
        assert page.evaluate("sessionStorage.getItem('agentgate-console-session')").startswith("agentgate-console-")

        # the page is open before the call: the call's card appears without a reload
        client = s3(gw, issuer.mint("agent-1", act="bob"), max_pool_connections=4)
        result: dict = {}

        def agent():
            try:
                result["status"] = client.delete_object(Bucket=BUCKET, Key="clicked")["ResponseMetadata"]["HTTPStatusCode"]
            except Exception as e:  # noqa: BLE001
                result["error"] = e
            result["done"] = time.time()

        t = threading.Thread(target=agent)
        t.start()
        card = page.wait_for_selector(".approval:has-text('approvals-bucket/clicked')", timeout=10_000)
        text = card.inner_text()
        for words in ("s3:DeleteObject", "agent-1 (for bob)", "deleting-needs-sre", "group sre", '"Key": "clicked"'):
            assert words in text, words
        approval_id = card.get_attribute("data-id")
        card.query_selector("input.reason").fill("ticket 99")
        page.click(f"button[data-approve='{approval_id}']")
        clicked = time.time()
        t.join(10)
        assert result.get("status") == 204, result
        assert result["done"] - clicked < 1.5
        page.wait_for_selector(f"#{approval_id}", state="detached", timeout=5_000)
        page.wait_for_selector(f"#decided tr:has-text('{approval_id}'):has-text('used')", timeout=5_000)
        row = page.inner_text(f"#decided tr:has-text('{approval_id}')")
        assert "alice (console)" in row and "ticket 99" in row
        page.wait_for_selector(f"#calls tr:has-text('{approval_id}'):has-text('forwarded')", timeout=5_000)

        # deny another with a reason: the agent's error carries it
        t2, t2_result = held_delete(client, "refused")
        card = page.wait_for_selector(".approval:has-text('approvals-bucket/refused')", timeout=10_000)
        other_id = card.get_attribute("data-id")
        page.click(f"button[data-deny='{other_id}']")  # no reason yet: refused, the card stays
        page.wait_for_selector(f"[id='{other_id}'] .error:has-text('needs a reason')", timeout=5_000)
        card.query_selector("input.reason").fill("not on a Friday")
        page.click(f"button[data-deny='{other_id}']")
        t2.join(10)
        code, message, _ = t2_result["error"]
        assert code == "ApprovalDenied" and "not on a Friday" in message and "alice (console" in message
    finally:
        page.close()


def test_an_agent_cannot_approve_its_own_call_in_the_console(gw, issuer):
    client = s3(gw, issuer.mint("agent-9", groups=["data-agents", "sre"]), max_pool_connections=4)
    t, result = held_delete(client, "self")
    with console(gw, issuer.mint("agent-9", groups=["sre"])) as c:
        asked = wait_for(lambda: [a for a in c.get("/api/state").json()["pending"] if a["principal"] == "agent-9"])[0]
        r = c.post(f"/api/approvals/{asked['id']}/approve", json={})
        assert r.status_code == 403 and "separation of duties" in r.json()["error"]
    with console(gw) as c:
        assert c.post(f"/api/approvals/{asked['id']}/deny", json={"reason": "cleanup"}).status_code == 200
        shown = c.get(f"/api/approvals/{asked['id']}").json()  # the refused attempt changed nothing
        assert [(e["event"], e["actor"], e["channel"], e["reason"]) for e in shown["history"]] == [
            ("requested", "agent-9", "gateway", shown["approval"]["request_reason"]),
            ("denied", "agentgate:admin", "console", "cleanup")]
    t.join(10)
    assert result["error"][0] == "ApprovalDenied"


def test_what_would_not_show_as_written_is_written_out_on_the_card(gw, issuer, browser):
    """A key with a right-to-left override and a zero-width space would read as another key
    ("bidi/prod-backup.sql"): the card writes them out, as the command line does."""
    page = browser.new_page()
    try:
        sign_in(page, gw, issuer)
        client = s3(gw, issuer.mint("agent-bidi"))
        key = "bidi/\u202elqs.pukcab-dorp\u200b"
        t, result = held_delete(client, key)
        card = page.wait_for_selector(".approval:has-text('bidi/')", timeout=10_000)
        text = card.inner_text()
        assert "approvals-bucket/bidi/\\u202elqs.pukcab-dorp\\u200b" in text, text
        assert '"Key": "bidi/\\\\u202elqs.pukcab-dorp\\\\u200b"' not in text  # JSON's own escapes are not doubled
        assert "\u202e" not in text and "\u200b" not in text
        card.query_selector("input.reason").fill("what is that key")
        page.click(f"button[data-deny='{card.get_attribute('data-id')}']")
        t.join(10)
        assert result["error"][0] == "ApprovalDenied"
    finally:
        page.close()


def test_line_breaks_tabs_and_runs_of_spaces_show_as_written_on_one_line(gw, issuer, browser):
    """A resource is shown on one line, where HTML would show a line break or a tab as a space and
    two spaces as one: "a\\nb", "a\\tb", "a  b" and "a b" are four keys. The card writes out line
    breaks and tabs (as the command line does) and keeps runs of spaces; so does a reason in the
    list of decisions. The parameters' JSON keeps its own escapes."""
    page = browser.new_page()
    try:
        sign_in(page, gw, issuer)
        client = s3(gw, issuer.mint("agent-lines"))
        key = "lines/old  report\tfinal\nv2"
        t, result = held_delete(client, key)
        card = page.wait_for_selector(".approval:has-text('lines/')", timeout=10_000)
        resource = card.query_selector("dd:nth-of-type(3)").inner_text()
        assert resource == "approvals-bucket/lines/old  report\\tfinal\\nv2", resource
        assert '"Key": "lines/old  report\\tfinal\\nv2"' in card.query_selector("pre").inner_text()
        approval_id = card.get_attribute("data-id")
        card.query_selector("input.reason").fill("two  spaces")
        page.click(f"button[data-deny='{approval_id}']")
        t.join(10)
        assert result["error"][0] == "ApprovalDenied"
        row = page.wait_for_selector(f"#decided tr:has-text('{approval_id}')", timeout=5_000)
        cells = [c.inner_text() for c in row.query_selector_all("td")]
        assert "s3:DeleteObject on approvals-bucket/lines/old  report\\tfinal\\nv2" in cells, cells
        assert "two  spaces" in cells, cells
    finally:
        page.close()


def test_a_token_or_reason_holding_a_lone_surrogate_or_nul_is_answered_not_an_error_page(gw, issuer):
    """JSON can carry what no stored text holds (``\\ud800``, a lone surrogate; ``\\u0000``): a
    token holding one is refused as any token that is not one, and a reason holding them is stored
    with U+FFFD in their place (PostgreSQL refuses NUL, and the console said its store could not
    be reached), not answered 500."""
    json_body = {"content-type": "application/json"}
    with httpx.Client(base_url=base(gw), trust_env=False) as c:
        for token in (b'"\\ud800"', b'"a\\ud800.b.c"', b'"agentgate-console-session.\\ud800.x"'):
            r = c.post("/api/login", content=b'{"token": ' + token + b"}", headers=json_body)
            assert r.status_code == 401 and "neither the local admin token nor an OIDC token" in r.json()["error"]
    client = s3(gw, issuer.mint("agent-odd"))
    t, result = held_delete(client, "odd")
    with console(gw) as c:
        asked = wait_for(lambda: [a for a in c.get("/api/state").json()["pending"] if a["principal"] == "agent-odd"])[0]
        r = c.post(f"/api/approvals/{asked['id']}/deny", content=b'{"reason": "no\\u0000pe \\ud800 sorry"}',
                   headers=json_body)
        assert r.status_code == 200, r.text
        assert r.json()["approval"]["reason"] == "no\ufffdpe \ufffd sorry"
        history = c.get(f"/api/approvals/{asked['id']}").json()["history"]
        assert history[-1]["reason"] == "no\ufffdpe \ufffd sorry"
    t.join(10)
    code, message, _ = result["error"]
    assert code == "ApprovalDenied" and "no\ufffdpe \ufffd sorry" in message
    assert "Traceback" not in gw.log()
    assert gw.cli("verify").returncode == 0


def test_the_console_link_an_agent_is_given_goes_to_its_approval(gw, issuer, browser):
    """The link in an agent's ApprovalPending error and in the webhook's message (/#ap-...): once
    signed in, the page goes to that approval's card, far down a long list, and puts the cursor in
    its reason, so that an approver following it decides that one; an approval no longer pending
    is said to be, with who decided it."""
    import datetime as dt

    from tests.support.approvals import insert_approvals

    now = dt.datetime.now(dt.timezone.utc)
    row = {"kind": "call", "action": "s3:DeleteObject", "status": "pending", "expires": now + dt.timedelta(hours=1),
           "principal": "agent-many", "params": {"Bucket": BUCKET}}
    insert_approvals(f"sqlite:///{gw.db_path}", [
        {**row, "id": f"ap-link{n:07d}", "binding_hash": f"{n + 7000:064d}", "resources": [f"{BUCKET}/many/{n}"],
         "requested": now - dt.timedelta(minutes=50) + dt.timedelta(seconds=n)} for n in range(40)])
    client = s3(gw, issuer.mint("agent-linked"))
    result: dict = {}

    def agent():
        try:
            result["status"] = client.delete_object(Bucket=BUCKET, Key="linked")["ResponseMetadata"]["HTTPStatusCode"]
        except Exception as e:  # noqa: BLE001
            result["error"] = e

    t = threading.Thread(target=agent)
    t.start()
    with console(gw) as c:
        approval_id = wait_for(lambda: [a["id"] for a in c.get("/api/state").json()["pending"]
                                        if a["principal"] == "agent-linked"])[0]
    page = browser.new_page(viewport={"width": 1200, "height": 800})
    try:
        link = f"{base(gw)}/#{approval_id}"
        page.goto(link)
        page.fill("#token", issuer.mint("alice", groups=["sre"]))
        page.keyboard.press("Enter")  # the sign-in form, from the keyboard
        page.wait_for_selector(f"[id='{approval_id}'].linked", timeout=5_000)
        top = page.evaluate(f"document.getElementById('{approval_id}').getBoundingClientRect().top")
        assert -1 < top < 400, top  # in view, although 40 older approvals are listed above it
        assert page.evaluate("document.activeElement.classList.contains('reason')")
        assert page.evaluate("document.activeElement.closest('.approval').id") == approval_id
        page.keyboard.type("ticket 7")
        page.keyboard.press("Tab")  # to its Approve button
        page.keyboard.press("Enter")
        t.join(10)
        assert result.get("status") == 204, result
        # the same link, once the approval is used: what became of it
        other = browser.new_page()
        try:
            other.goto(link)
            other.fill("#token", issuer.mint("bob", groups=["sre"]))
            other.click("#login-form button")
            note = other.wait_for_selector("#linked-note:not([hidden])", timeout=5_000).inner_text()
            assert f"Approval {approval_id}" in note and "is used by alice (console)" in note and "ticket 7" in note
            assert "only a pending approval can be decided" in note
            other.goto(f"{base(gw)}/#ap-000000000000")  # another link in the same tab, signed in
            note = other.wait_for_selector("#linked-note:has-text('ap-000000000000')", timeout=5_000).inner_text()
            assert "there is no approval 'ap-000000000000'" in note
        finally:
            other.close()
    finally:
        page.close()


def test_from_the_keyboard_the_cursor_goes_on_to_the_next_card_once_one_is_decided(gw, issuer, browser):
    """Deciding a card from the keyboard (a reason typed, Tab to Deny, Enter) removes the card; the
    cursor then goes to the reason of the card that takes its place, not back to the top of the
    page, from where the next card is every control of the page away. A decision refused (a denial
    with no reason) puts the cursor back in the card's reason."""
    import datetime as dt

    from tests.support.approvals import insert_approvals

    now = dt.datetime.now(dt.timezone.utc)
    row = {"kind": "call", "action": "s3:DeleteObject", "status": "pending", "expires": now + dt.timedelta(hours=1),
           "principal": "agent-keys", "params": {"Bucket": BUCKET}}
    ids = [f"ap-keys{n:08d}" for n in range(3)]
    insert_approvals(f"sqlite:///{gw.db_path}", [
        {**row, "id": i, "binding_hash": f"{n + 9000:064d}", "resources": [f"{BUCKET}/keys/{n}"],
         "requested": now - dt.timedelta(hours=2) + dt.timedelta(seconds=n)} for n, i in enumerate(ids)])
    page = browser.new_page()
    try:
        sign_in(page, gw, issuer)
        page.wait_for_selector(f"[id='{ids[2]}']", timeout=5_000)
        page.focus(f"[id='{ids[0]}'] input.reason")
        page.keyboard.press("Tab")  # Approve
        page.keyboard.press("Tab")  # Deny, with no reason: refused, and the cursor is back in the reason
        page.keyboard.press("Enter")
        page.wait_for_selector(f"[id='{ids[0]}'] .error:has-text('needs a reason')", timeout=5_000)
        assert page.evaluate("[document.activeElement.className, document.activeElement.closest('.approval')?.id]") \
            == ["reason", ids[0]]
        page.keyboard.type("not these")
        page.keyboard.press("Tab")
        page.keyboard.press("Tab")
        page.keyboard.press("Enter")
        page.wait_for_selector(f"[id='{ids[0]}']", state="detached", timeout=5_000)
        focused = page.evaluate("[document.activeElement.className, document.activeElement.closest('.approval')?.id]")
        assert focused == ["reason", ids[1]], focused
        page.keyboard.type("nor this")
        page.keyboard.press("Tab")
        page.keyboard.press("Tab")
        page.keyboard.press("Enter")
        page.wait_for_selector(f"[id='{ids[1]}']", state="detached", timeout=5_000)
        assert page.evaluate("document.activeElement.closest('.approval')?.id") == ids[2]
        with console(gw) as c:
            assert [c.get(f"/api/approvals/{i}").json()["approval"]["reason"] for i in ids[:2]] == ["not these", "nor this"]
            c.post(f"/api/approvals/{ids[2]}/deny", json={"reason": "cleanup"})
    finally:
        page.close()


def test_a_row_that_cannot_be_read_is_named_and_the_console_serves_the_rest(tmp_path, issuer, moto, browser):
    """A pending approval and a recent call whose stored values cannot be read (edited behind the
    gateway's back) made the whole console a 503: no approver could decide anything. The console now
    names them as `agentgate verify` does, serves every other approval and call, and says so on the
    page; the approval itself still shows, without the value that cannot be read."""
    import datetime as dt

    from addons.core.store import Store
    from tests.support.approvals import insert_approvals
    from tests.test_verify_stored import edit

    gw = start_gateway(tmp_path / "gw", issuer, moto)
    try:
        agent = s3(gw, issuer.mint("agent-1"))
        for _ in range(3):
            agent.list_buckets()
        url = f"sqlite:///{gw.db_path}"
        now = dt.datetime.now(dt.timezone.utc)
        row = {"kind": "call", "action": "s3:DeleteObject", "status": "pending", "principal": "agent-1",
               "expires": now + dt.timedelta(hours=1)}
        insert_approvals(url, [{**row, "id": f"ap-{name:0<12}", "binding_hash": fill * 64, "params": {"Key": name},
                                "requested": now - dt.timedelta(seconds=10 - n)}
                               for n, (name, fill) in enumerate([("good", "a"), ("bad", "b")])])
        calls = [c["id"] for c in Store(url).calls(limit=None, newest_first=False)]
        assert len(calls) >= 3
        edit(url, f"update calls set time = 'yesterday' where id = '{calls[1]}'",
             "update approvals set params = '{bad' where id = 'ap-bad000000000'")
        with console(gw) as c:
            r = c.get("/api/state")
            assert r.status_code == 200, r.text
            state = r.json()
            shown_calls = [x["id"] for x in state["calls"]]
            assert calls[1] not in shown_calls and calls[0] in shown_calls and calls[2] in shown_calls
            assert [a["id"] for a in state["pending"]] == ["ap-good00000000"]
            [bad_call] = [u for u in state["unreadable"] if u.startswith(f"call {calls[1]} ")]
            [bad_approval] = [u for u in state["unreadable"] if u.startswith("approval ap-bad000000000")]
            assert "time" in bad_call and "params" in bad_approval
            r = c.get("/api/approvals/ap-bad000000000")
            assert r.status_code == 200, r.text
            shown_approval = r.json()
            assert shown_approval["approval"]["params"] is None and shown_approval["approval"]["state"] == "pending"
            assert any("params" in u for u in shown_approval["unreadable"])
        page = browser.new_page()
        try:
            sign_in(page, gw, issuer)
            page.wait_for_selector("#unreadable:not([hidden])", timeout=10_000)
            notice = page.text_content("#unreadable")
            assert notice.startswith("2 rows of the store cannot be read and are left out") and calls[1] in notice
            assert page.locator("#pending .approval").count() == 1
        finally:
            page.close()
    finally:
        gw.stop()


def test_a_revoked_approval_shows_who_revoked_it_and_why(gw, issuer, browser):
    """An approval bob approved and alice then revoked: the console's recently decided row, and the
    note its link gives, name alice, her time and her reason, not bob's approval as the revocation."""
    import datetime as dt

    from tests.support.approvals import insert_approvals
    from tests.test_approval_e2e import approve, token_file

    now = dt.datetime.now(dt.timezone.utc)
    approval_id = "ap-revoked000001"
    insert_approvals(f"sqlite:///{gw.db_path}", [{
        "id": approval_id, "kind": "call", "action": "s3:DeleteObject", "status": "pending", "principal": "agent-withdrawn",
        "params": {"Bucket": BUCKET, "Key": "withdrawn"}, "resources": [f"{BUCKET}/withdrawn"],
        "binding_hash": f"{31337:064d}", "requested": now, "expires": now + dt.timedelta(hours=1)}])
    approve(gw, issuer, approval_id, "bob", ("sre",), "--reason", "ok to drop it")
    gw.cli("approvals", "revoke", approval_id, "--reason", "changed my mind", "--token-file", token_file(gw, issuer, "alice"))
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    try:
        sign_in(page, gw, issuer)
        row = page.wait_for_selector(f"#decided tr:has-text('{approval_id}')", timeout=5_000).inner_text()
        assert "revoked" in row and "alice" in row and "changed my mind" in row, row
        assert "bob" not in row and "ok to drop it" not in row, row
        page.goto(f"{base(gw)}/#{approval_id}")
        note = page.wait_for_selector(f"#linked-note:has-text('{approval_id}')", timeout=5_000).inner_text()
        assert "is revoked by alice at" in note and "changed my mind" in note and "bob" not in note, note
    finally:
        page.close()
