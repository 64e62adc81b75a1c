"""notify: tells approvers about approvals through a webhook (``webhook_url``), in the JSON of a
Slack incoming webhook (``text``, with ``blocks`` for clients that render them; Mattermost, Rocket.Chat
and Teams' Slack-compatible connectors read the same).

Posting never sits on a call's path: ``requested``/``decided`` queue a message and return; each
message is posted in the background, retried with exponential backoff (connection errors, 5xx,
429 with its Retry-After), and dropped with a log line after the last attempt.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import httpx

from .core.approvals import Approval, describe_approvers, duration_text
from .core.chain import ONE_LINE

log = logging.getLogger("agentgate.notify")

ATTEMPTS = 5
BACKOFF = 0.5  # seconds before the second attempt; doubled each time
MAX_WAIT = 30.0  # the longest pause between attempts, whatever Retry-After says
TIMEOUT = 5.0
MAX_PENDING = 1000  # messages in flight; beyond, new ones are dropped (and logged)
SEND_WITHIN = 5.0  # seconds the command line's post (retries included) may take


def _esc(value: Any) -> str:
    """Text for Slack's mrkdwn: ``&``, ``<`` and ``>`` escaped as Slack asks, so that what an agent
    wrote (a key, a parameter, a reason) cannot become a link (``<https://...|Open in console>``) or a
    mention (``<!channel>``) in the approvers' channel."""
    return str(value).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


MAX_RESOURCE_TEXT = 600  # characters of the resources a message names (Slack refuses sections over 3,000)


def _line(value: Any) -> str:
    """``_esc`` for text that is one line (a resource, a principal, a rule, a reason): line breaks
    and other control characters written out, so that a key an agent chose cannot add lines that
    look like the message's own (another rule, other approvers)."""
    return _esc(str(value).translate(ONE_LINE))


def _resources(resource: str | None) -> str:
    text = resource or ""
    if len(text) > MAX_RESOURCE_TEXT:
        return f"{text[:MAX_RESOURCE_TEXT]}… ({len(text)} characters; the console shows them all)"
    return text


def message(a: Approval, event: str, console_url: str = "") -> dict[str, Any]:
    """The webhook's JSON for an approval that was ``requested`` or ``decided``."""
    who = _line(a.principal + (f" (on behalf of {a.on_behalf_of})" if a.on_behalf_of else ""))
    link = f"{console_url.rstrip('/')}/#{a.id}" if console_url else ""
    if a.kind == "grant":
        what = _line(f"access as {a.role} for {duration_text(a.duration)}")
        why = _line(f"reason: {a.request_reason}")
        command = _esc(f"agentgate access approve {a.id} --token-file <your token>")
    else:
        what = _line(f"{a.action} on {_resources(a.resource)}")
        why = _line(f"rule {a.rule}: {a.request_reason}")
        command = _esc(f"agentgate approvals approve {a.id} --token-file <your token>")
    if event == "requested":
        head = f"Approval {a.id}: {who} asks for {what}"
        # what exactly: two calls on one resource differ in their parameters (a governance bypass, a
        # version), and an approver reading only this message must see which one is asked for
        params = "" if a.kind == "grant" else f"\nParameters: `{_esc(_params_text(a.params))}`"
        detail = (f"{why}{params}\nApprovers: {_esc(describe_approvers(a.approvers))}\nApprove: `{command}`"
                  + (f"\nConsole: {link}" if link else ""))
    elif a.state() == "revoked":  # withdrawn by whoever revoked it, after (or instead of) its approval
        head = f"Approval {a.id} revoked by {_line(a.revoked_by)}: {who}, {what}"
        lines = [f"reason: {_line(a.revoke_reason)}"] if a.revoke_reason else []
        if a.approver:
            lines.append(_line(f"approved before by {a.approver} ({a.channel})" + (f": {a.reason}" if a.reason else "")))
        detail = "\n".join(lines)
    else:
        head = f"Approval {a.id} {a.state()} by {_line(a.approver)} ({_line(a.channel)}): {who}, {what}"
        detail = f"reason: {_line(a.reason)}" if a.reason else ""
    text = head + ("\n" + detail if detail else "")
    blocks: list[dict[str, Any]] = [{"type": "section", "text": {"type": "mrkdwn", "text": f"*{head}*"}}]
    if detail:
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": detail}})
    return {"text": text, "blocks": blocks,
            "agentgate": {"event": event, "approval": a.as_dict()}}


PARAMS_SHOWN = 1500  # characters of an approval's parameters a message shows


def _params_text(params: Any) -> str:
    """An approval's parameters (masked as stored) as one line of JSON, cut to PARAMS_SHOWN."""
    text = json.dumps(params, ensure_ascii=False, separators=(", ", ": "), sort_keys=True, default=str)
    text = text.replace("`", "'")  # the message quotes it in backticks
    text = text.translate(ONE_LINE)  # format characters (a right-to-left override) written out, as on the other lines
    return text if len(text) <= PARAMS_SHOWN else text[:PARAMS_SHOWN] + f"… ({len(text)} characters: see the console)"


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after", "")
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def _should_retry(status: int) -> bool:
    return status >= 500 or status in (408, 429)


class Notifier:
    def __init__(self, url: str, *, console_url: str = "", attempts: int = ATTEMPTS, backoff: float = BACKOFF,
                 timeout: float = TIMEOUT) -> None:
        self.url = url
        self.console_url = console_url
        self.attempts = attempts
        self.backoff = backoff
        self.timeout = timeout
        self._client: httpx.AsyncClient | None = None
        self._tasks: set[asyncio.Task] = set()
        self.stats = {"sent": 0, "failed": 0, "dropped": 0, "attempts": 0}

    def requested(self, a: Approval) -> None:
        self.post(message(a, "requested", self.console_url))

    def decided(self, a: Approval) -> None:
        self.post(message(a, "decided", self.console_url))

    def post(self, payload: dict[str, Any]) -> None:
        """Queue ``payload``; returns at once (call it from the event loop)."""
        if len(self._tasks) >= MAX_PENDING:
            self.stats["dropped"] += 1
            log.warning("webhook: %d messages are still being posted; dropping one", len(self._tasks))
            return
        task = asyncio.get_running_loop().create_task(self._send(payload), name="agentgate-webhook")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, payload: dict[str, Any]) -> bool:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self.timeout, trust_env=False)
        pause = self.backoff
        problem = ""
        for attempt in range(1, self.attempts + 1):
            self.stats["attempts"] += 1
            try:
                r = await self._client.post(self.url, json=payload)
            except httpx.HTTPError as e:
                problem = f"{type(e).__name__}: {e}"
                wait = pause
            else:
                if r.status_code < 300:
                    self.stats["sent"] += 1
                    return True
                problem = f"HTTP {r.status_code}"
                if not _should_retry(r.status_code):
                    break
                wait = _retry_after(r) if r.status_code == 429 and _retry_after(r) is not None else pause
            if attempt < self.attempts:
                await asyncio.sleep(min(wait, MAX_WAIT))
                pause *= 2
        self.stats["failed"] += 1
        log.error("webhook: could not post to %s (%s); giving up on this message", _safe(self.url), problem)
        return False

    async def aclose(self, timeout: float = 2.0) -> None:
        """Give messages in flight ``timeout`` seconds, then stop."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)
        for t in list(self._tasks):
            t.cancel()
        if self._client is not None:
            await self._client.aclose()
            self._client = None


def send(url: str, payload: dict[str, Any], *, attempts: int = 3, backoff: float = BACKOFF,
         timeout: float = TIMEOUT, within: float = SEND_WITHIN) -> bool:
    """Post one message now, with retries (for the command line, which has no loop to leave it to),
    all within ``within`` seconds: a webhook that does not answer holds the approver's command that
    long at most (the decision is already made)."""
    pause = backoff
    deadline = time.monotonic() + within
    with httpx.Client(timeout=timeout, trust_env=False) as client:
        for attempt in range(1, attempts + 1):
            left = deadline - time.monotonic()
            if left <= 0.05:
                return False
            try:
                r = client.post(url, json=payload, timeout=min(timeout, left))
                if r.status_code < 300:
                    return True
                if not _should_retry(r.status_code):
                    return False
            except httpx.HTTPError:
                pass
            if attempt < attempts:
                time.sleep(max(0.0, min(pause, deadline - time.monotonic())))
                pause *= 2
    return False


def _safe(url: str) -> str:
    """A webhook URL without its secret path (Slack's carry the token there)."""
    head, sep, _ = url.partition("://")
    host = url[len(head) + len(sep):].split("/", 1)[0]
    return f"{head}{sep}{host}/…"
