"""Commands that take recorded calls elsewhere: export (JSON Lines, OCSF, mitmproxy flows, OSCAL),
replay (re-issue recorded calls against a target) and report (the assessor's HTML evidence report).

Every command takes ``--db URL`` like the store commands; errors are one line on stderr and a
non-zero exit (1 when the store or the target says no, 2 for bad input).
"""

from __future__ import annotations

import datetime as dt
import errno
import json
import os
import signal
import stat
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import click

from .store import (BadInput, _echo_json, _key, _line, _n, _settings, _store, _text, broken, db_option, fail_unreadable,
                    key_option, parse_when, progress)


def _period(since: str | None, until: str | None) -> tuple[dt.datetime | None, dt.datetime | None]:
    start = parse_when(since, "--since") if since is not None else None
    end = parse_when(until, "--until") if until is not None else None
    if start and end and start >= end:
        raise BadInput(f"--since ({start.isoformat()}) is not before --until ({end.isoformat()})")
    if start and start > dt.datetime.now(dt.timezone.utc):
        raise BadInput(f"--since {start.isoformat()} is still to come: nothing has been recorded since then")
    return start, end


def _gateway_files(db: str | None) -> list[tuple[Path, str, bool]]:
    """What an export must never replace: the store's SQLite file and the files SQLite keeps beside
    it, the keys, the CA, the policies and the configuration, as (real path, what it is, whether
    everything under it counts)."""
    from ..core.store import _sqlite_path

    settings = _settings(db)
    found: list[tuple[Path, str, bool]] = []
    # the store read (--db) and the one the settings name, which a gateway may be writing
    for url in dict.fromkeys((settings.db, _settings(None).db)):
        try:
            database = _sqlite_path(url)
        except Exception:  # noqa: BLE001 - not a URL: the store's own error says so when it is opened
            database = None
        if database is not None:
            for suffix in ("", "-wal", "-shm", "-journal"):
                found.append((Path(os.path.realpath(f"{database}{suffix}")), "the store's database", False))
    for where, what in ((settings.keys, "the gateway's keys"), (settings.certs, "the gateway's CA"),
                        (settings.policies, "the policies")):
        if where:
            found.append((Path(os.path.realpath(where)), what, True))
    if settings.config_file:
        found.append((Path(os.path.realpath(settings.config_file)), "the gateway's configuration", False))
    return found


def _check_output(path: str, option: str = "-o", protected: list[tuple[Path, str, bool]] | None = None) -> None:
    """Refuse an output path that cannot be written, or must not be (the store, the keys, ...),
    before any work is done."""
    if path == "-":
        return
    if not path.strip():
        raise BadInput(f"{option}: the file name is empty; give the file to write")
    target = Path(path)
    try:
        if target.is_dir() or (path.endswith(os.sep) and not target.exists()):
            raise BadInput(f"{option}: {path} is a directory; give a file name")
        if not target.parent.exists():
            raise BadInput(f"{option}: the directory {target.parent} does not exist")
        real = Path(os.path.realpath(path))
        for where, what, tree in protected or ():
            if real == where or (tree and where in real.parents) or (
                    real.exists() and where.exists() and os.path.samefile(real, where)):
                raise BadInput(f"{option}: {path} is {what} ({where}); an export there would replace it: "
                               "give another file name")
    except OSError as e:
        raise BadInput(f"{option}: cannot write {path}: {e.strerror or e}") from None


def _not_a_file(path: str) -> bool:
    """Whether ``path`` is there and, links followed, not a regular file: a pipe, a terminal, a
    device (``/dev/stdout``), written into as it is rather than replaced."""
    try:
        return not stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


_WRITE_ERRORS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EPIPE, errno.EFBIG, errno.EROFS})


@contextmanager
def _output(path: str, protected: list[tuple[Path, str, bool]], binary: bool = False) -> Iterator[IO[Any]]:
    """A file written whole or not at all (a temporary file renamed into place, beside the file a
    link names, so that the link stays; a new file 0600, one replaced keeping its mode); a pipe or
    device written into as it is; '-' is stdout. ``protected``: ``_gateway_files``."""
    if path == "-":
        yield sys.stdout.buffer if binary else sys.stdout
        return
    _check_output(path, protected=protected)
    text = {} if binary else {"encoding": "utf-8", "newline": "\n"}
    if _not_a_file(path):
        try:
            f = open(path, "wb" if binary else "w", **text)
        except OSError as e:
            raise click.ClickException(f"cannot write {path}: {e.strerror or e}") from None
        try:
            with f:
                yield f
        except OSError as e:
            if e.errno not in _WRITE_ERRORS:
                raise
            raise click.ClickException(f"cannot write {path}: {e.strerror or e}") from None
        return
    target = Path(os.path.realpath(path))
    with _stopped_by_signals():
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
        except OSError as e:
            raise click.ClickException(f"cannot write {path}: {e.strerror or e} (in {target.parent})") from None
        yield from _written_into(fd, tmp, target, path, binary, text)


@contextmanager
def _stopped_by_signals() -> Iterator[None]:
    """While an export's temporary file exists: SIGTERM and SIGHUP (unless ignored, as under nohup)
    raise Stopped instead of ending the process at once, which left the file behind."""
    from ..cli import Stopped

    def stop(signum: int, _frame: Any) -> None:
        raise Stopped(signum)

    before = {}
    for sig in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) is not signal.SIG_IGN:
            try:
                before[sig] = signal.signal(sig, stop)
            except ValueError:  # not the main thread: signals are left as they are
                pass
    try:
        yield
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


def _written_into(fd: int, tmp: str, target: Path, path: str, binary: bool, text: dict) -> Iterator[IO[Any]]:
    try:
        try:
            with os.fdopen(fd, "wb" if binary else "w", **text) as f:
                yield f
        except OSError as e:
            if e.errno not in _WRITE_ERRORS:
                raise
            raise click.ClickException(f"cannot write {path}: {e.strerror or e}") from None
        try:
            mode = stat.S_IMODE(os.stat(target).st_mode)  # a file replaced keeps its mode
        except OSError:
            mode = 0o600  # evidence holds parameters, object keys and principals: its owner's alone
        os.chmod(tmp, mode)
        try:
            os.replace(tmp, target)
        except OSError as e:
            raise click.ClickException(f"cannot write {path}: {e.strerror or e}") from None
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


since_option = click.option("--since", metavar="WHEN", help="From this time on: ISO 8601 (UTC unless given) or an age (1h, 7d).")
until_option = click.option("--until", metavar="WHEN", help="Before this time: ISO 8601 or an age.")


# -- export ------------------------------------------------------------------------------------


@click.command("export")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "ocsf", "mitm", "oscal"]), required=True,
              help="jsonl: one record per line; ocsf: OCSF 1.1 API Activity events, one per line; mitm: a mitmproxy "
                   "flow file (mitmweb -r); oscal: OSCAL assessment results, with the JSON Lines evidence beside it.")
@since_option
@until_option
@click.option("-o", "--output", metavar="FILE", required=True, help="Where to write ('-' for standard output: jsonl, ocsf).")
@click.option("--evidence", metavar="FILE", help="oscal: where the JSON Lines evidence goes (default: FILE with .jsonl "
                                                 "in place of its suffix); the approvals' evidence goes beside it, "
                                                 "in NAME.approvals.jsonl.")
@db_option
@key_option
@click.option("--no-verify", is_flag=True, help="jsonl, ocsf, mitm: write the records without checking their chains "
                                                "(a store known not to verify, whose records are wanted as they are).")
@click.option("--skip-unreadable", is_flag=True,
              help="Leave out the records (and, for oscal, approvals and events) holding a value that cannot be read, "
                   "naming each on standard error, instead of writing nothing.")
def export(fmt: str, since: str | None, until: str | None, output: str, evidence: str | None, db: str | None,
           key_file: str | None, no_verify: bool, skip_unreadable: bool) -> None:
    """Write the recorded calls of a period (oldest first, masked as stored) for other tools.

    The chains that vouch for the records are checked first (with the chain key, --key-file, as
    `agentgate verify` does): where they do not verify, each problem is a line on standard error and
    nothing is written (exit 1), unless --no-verify. OSCAL states the whole store's verification in
    its AU-9 finding instead. A record holding a value that cannot be read (a BLOB where text
    belongs, text that is no time, JSON that does not parse) is named on standard error and nothing
    is written (exit 1), unless --skip-unreadable: then it is left out.
    """
    from ..core.export import iter_calls, write_jsonl, write_mitm, write_ocsf

    start, end = _period(since, until)
    if output == "-" and fmt in ("mitm", "oscal"):
        raise BadInput(f"--format {fmt} writes a file: give -o FILE")
    if evidence and fmt != "oscal":
        raise BadInput("--evidence goes with --format oscal")
    if no_verify and fmt == "oscal":
        raise BadInput("--no-verify does not go with --format oscal: its AU-9 finding is the chains' verification")
    protected = _gateway_files(db)
    _check_output(output, protected=protected)
    if evidence:
        _check_output(evidence, "--evidence", protected)
    key = _key(key_file, db)
    with _store(db) as store:
        if fmt == "oscal":
            _export_oscal(store, start, end, Path(output), Path(evidence) if evidence else None, key, protected,
                          skip_unreadable)
            return
        checked = None if no_verify else _verify_period(store, start, end, key)
        progress(f"reading the records of {store.where} ...")
        unreadable: list[str] = []
        calls = _counted(iter_calls(store, since=start, until=end, unreadable=unreadable))
        late = [0]
        if checked is not None:
            calls = _checked_only(calls, checked.checked, late)
        if fmt == "jsonl":
            with _output(output, protected) as f:
                n = write_jsonl(calls, f)
                _whole_or_nothing(unreadable, skip_unreadable, output)
            what = _n(n, "record")
        elif fmt == "ocsf":
            with _output(output, protected) as f:
                n = write_ocsf(calls, f)
                _whole_or_nothing(unreadable, skip_unreadable, output)
            what = _n(n, "OCSF API Activity event")
        else:
            with _output(output, protected, binary=True) as f:
                n, skipped = write_mitm(calls, f)
                _whole_or_nothing(unreadable, skip_unreadable, output)
            what = _n(n, "flow") + (f" ({_n(skipped, 'connection record')} left out: not calls)" if skipped else "")
        if checked is None:
            how = "not verified (--no-verify)"
        else:
            how = "their chains verify" + (" with the chain key" if key is not None else
                                           " (hashes and links: no chain key, so not the MACs)")
        if unreadable:
            how += f"; {_n(len(unreadable), 'record')} holding a value that cannot be read left out (--skip-unreadable)"
        if late[0]:
            how += (f"; {_n(late[0], 'record')} of the period committed after the chains were checked left out "
                    "(export again for them)")
            if output == "-":
                click.echo(f"{_n(late[0], 'record')} of the period committed after the chains were checked left "
                           "out (export again for them)", err=True)
        _done(what, output, how)


def _verify_period(store: Any, start: dt.datetime | None, end: dt.datetime | None, key: bytes | None) -> Any:
    """The check of the chains that vouch for the calls of [start, end) (``core.store.verify_period``);
    where they do not verify, each problem is a line on standard error and the export stops with
    nothing written: a record altered, forged or missing is not handed on as evidence."""
    from ..core.store import verify_period

    progress("verifying the chains of the period's records ...")
    result = verify_period(store, start, end, key)
    if result.ok:
        return result
    for problem in result.problems[:50]:
        click.echo(f"BROKEN: {_line(problem)}", err=True)
    if len(result.problems) > 50:
        click.echo(f"... and {len(result.problems) - 50} more problems", err=True)
    hint = ""
    if key is not None and all("with the chain key" in p for p in result.problems):
        hint = " (every problem is a MAC that does not verify: is --key-file this store's chain key?)"
    unreadable = any(" cannot be read: " in p for p in result.problems)
    raise click.ClickException(f"nothing exported: the chains of these records do not verify "
                               f"({_n(len(result.problems), 'problem')}, above){hint}; `agentgate verify` checks "
                               "the whole store, and --no-verify exports the records as they are"
                               + (" (with --skip-unreadable, those that cannot be read left out)" if unreadable else ""))


def _whole_or_nothing(unreadable: list[str], skip: bool, output: str) -> None:
    """Once an export is written (before it replaces its file): each row it left out because a value
    of it cannot be read (``core.store.readable``), named on standard error as `agentgate verify`
    names it. Unless the user asked for that (--skip-unreadable), the export then fails, so that a
    file is never handed on as evidence with a record silently missing from it: raised here, inside
    ``_output``, it leaves the file as it was (what went to standard output or a pipe stays
    written)."""
    if not unreadable:
        return
    broken(unreadable)
    if skip:
        return
    rows = "1 row of the store holds" if len(unreadable) == 1 else f"{len(unreadable)} rows of the store hold"
    written = ("nothing exported" if output != "-" and not _not_a_file(output)
               else f"the export to {'standard output' if output == '-' else output} is not whole")
    raise click.ClickException(f"{written}: {rows} a value that cannot be read (above); --skip-unreadable exports "
                               "the rest, leaving those out; `agentgate verify` checks the whole store")


def _checked_only(calls: Iterator[dict], checked: dict[str, int], late: list[int]) -> Iterator[dict]:
    """``calls`` that ``verify_period`` vouched for: a record of the period committed after the check
    (a higher seq than its writer's last one checked, or a new writer) is left out and counted in
    ``late[0]``."""
    for call in calls:
        if call.get("seq") is not None and call["seq"] <= checked.get(call.get("writer_id"), 0):
            yield call
        else:
            late[0] += 1


PROGRESS_EVERY = 50_000  # records: a line on standard error each time, on long exports


def _counted(calls: Iterator[dict]) -> Iterator[dict]:
    """``calls`` as they are, with a line of progress on a terminal's standard error every PROGRESS_EVERY."""
    for n, call in enumerate(calls, 1):
        if n % PROGRESS_EVERY == 0:
            progress(f"  {n} records ...")
        yield call


def _done(what: str, output: str, how: str = "") -> None:
    if output != "-":
        click.echo(f"wrote {what} to {output}" + (f"; {how}" if how else ""), err=True)


def _export_oscal(store: Any, start: dt.datetime | None, end: dt.datetime | None, output: Path,
                  evidence: Path | None, key: bytes | None, protected: list[tuple[Path, str, bool]],
                  skip_unreadable: bool = False) -> None:
    from ..core.export import file_sha256, iter_approvals, iter_calls, oscal_assessment_results, write_jsonl
    from ..core.report import summarise

    for path, option in ((output, "-o"), (evidence, "--evidence")):
        if path is not None and _not_a_file(str(path)):
            raise BadInput(f"{option}: {path} is not a regular file; the OSCAL document links its evidence by "
                           "path and SHA-256, so both are written as files")
    evidence = evidence or output.with_suffix(".jsonl")
    if evidence.resolve() == output.resolve():
        raise BadInput(f"--evidence: {evidence} is the OSCAL file itself; give another name")
    approvals_file = evidence.with_name(evidence.name.removesuffix(".jsonl") + ".approvals.jsonl")
    if approvals_file.resolve() == output.resolve():
        raise BadInput(f"-o: {output} is where the approvals' evidence goes; give another name")
    _check_output(str(evidence), "--evidence", protected)
    _check_output(str(approvals_file), "--evidence (the approvals' file beside it)", protected)
    click.echo("reading the period and verifying the chains ...", err=True)
    summary = summarise(store, since=start, until=end, chain_key=key)
    # the evidence and the approvals' file are replaced together, once nothing is found unreadable
    # (or the user asked to leave out what is): never one file without the other
    unreadable: list[str] = []
    with _output(str(evidence), protected) as f:
        n = write_jsonl(iter_calls(store, since=summary.start, until=summary.end, unreadable=unreadable), f)
        with _output(str(approvals_file), protected) as g:
            approvals = write_jsonl(iter_approvals(store, since=summary.start, until=summary.end,
                                                   unreadable=unreadable), g)
            summary.unreadable = list(dict.fromkeys(summary.unreadable + unreadable))
            _whole_or_nothing(summary.unreadable, skip_unreadable, str(output))
    href = os.path.relpath(evidence.resolve(), output.resolve().parent)
    doc = oscal_assessment_results(summary, evidence_href=href, evidence_sha256=file_sha256(evidence),
                                   evidence_records=n,
                                   approvals_href=os.path.relpath(approvals_file.resolve(), output.resolve().parent),
                                   approvals_sha256=file_sha256(approvals_file), approvals_count=approvals)
    with _output(str(output), protected) as f:
        json.dump(doc, f, indent=2, ensure_ascii=False)
        f.write("\n")
    _done(f"{_n(n, 'record')} of evidence", str(evidence))
    _done(f"{approvals} approval{'' if approvals == 1 else 's'} with {'its' if approvals == 1 else 'their'} events",
          str(approvals_file))
    _done(f"OSCAL assessment results ({len(doc['assessment-results']['results'][0]['observations'])} observations, "
          f"{summary.start_text} to {summary.end_text}{summary.cut_text})", str(output))
    _fail_unless_verified(summary)


# -- replay ------------------------------------------------------------------------------------


def _ids(values: tuple[str, ...]) -> list[str]:
    return [i.strip() for v in values for i in v.split(",") if i.strip()]


@click.command("replay")
@click.argument("session", required=False, metavar="[SESSION]")
@click.option("--calls", "call_ids", multiple=True, metavar="IDS", help="Replay these calls (ids, comma-separated or "
                                                                         "repeated) instead of a session.")
@click.option("--principal", metavar="SUB", help="Replay the calls of this principal (the token's subject) that were "
                                                 "forwarded, oldest first, over every session and gateway process, "
                                                 "instead of a session; with --since and --until, those of a period.")
@click.option("--since", metavar="WHEN", help="With --principal: from this time on (ISO 8601, UTC unless given, or "
                                              "an age: 1h, 7d).")
@click.option("--until", metavar="WHEN", help="With --principal: before this time (ISO 8601 or an age).")
@click.option("--to", "target", metavar="URL", help="Send the calls here, keeping their Host (moto, LocalStack); STS "
                                                    "too. Default: the upstream setting, else AWS itself.")
@click.option("--dry-run", is_flag=True, help="Print what would be sent; send nothing.")
@click.option("--diff", "show_diff", is_flag=True, help="Print the structural diff of each response.")
@click.option("--allow-writes", is_flag=True, help="Also replay calls that change something (access level Write, "
                                                   "Tagging, Permissions management or unknown) or needed an approval.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@click.option("--exit-code", "exit_code", is_flag=True, help="Exit with 1 when a replayed call was answered otherwise "
                                                             "than recorded (its status, or a value or member that is "
                                                             "not volatile), as git diff --exit-code does.")
@db_option
def replay(session: str | None, call_ids: tuple[str, ...], principal: str | None, since: str | None,
           until: str | None, target: str | None, dry_run: bool, show_diff: bool, allow_writes: bool, as_json: bool,
           exit_code: bool, db: str | None) -> None:
    """Re-issue recorded, forwarded calls with current JIT credentials and compare the responses.

    Denied calls, and calls held for approval that nobody released, are never replayed; calls that
    change something only with --allow-writes. Calls whose request had a value masked are listed
    as skipped, with the reason.
    """
    from ..core import replay as rp

    ids = _ids(call_ids)
    if sum(map(bool, (session, ids, principal))) != 1:
        raise BadInput("give a SESSION, --calls IDS or --principal SUB (one of them)")
    if (since is not None or until is not None) and not principal:
        raise BadInput("--since and --until choose a principal's calls: give --principal SUB with them")
    start, end = _period(since, until)
    settings = _settings(db)
    if target is not None:
        from ..settings import SettingsError, endpoint_url

        try:
            endpoint_url(target, "--to")
        except SettingsError as e:
            raise BadInput(str(e)) from None
    target = target if target is not None else (settings.upstream or None)
    with _store(db) as store:
        if session:
            if store.session(session) is None and not store.calls(session_id=session, limit=1):
                raise click.ClickException(f"no session {session!r} in the store at {store.where}")
            calls = store.calls(session_id=session, limit=None, newest_first=False)
        elif principal:
            calls = store.calls(principal=principal, outcome="forwarded", since=start, until=end, limit=None,
                                newest_first=False)
            if not calls:
                period = "".join((f" since {start.isoformat()}" if start else "",
                                  f" before {end.isoformat()}" if end else ""))
                raise click.ClickException(f"no forwarded call by principal {principal!r}{period} in the store at "
                                           f"{store.where}")
        else:
            calls = []
            for i in ids:
                call = store.call(i)
                if call is None:
                    raise click.ClickException(f"no call {i!r} in the store at {store.where}")
                calls.append(call)
    plans = rp.plan(calls, allow_writes=allow_writes)
    where = target or "AWS (the recorded hosts)"
    if dry_run:
        if not as_json:
            n = sum(1 for p in plans if p.skip is None)
            click.echo(f"dry run: {n} of {len(plans)} calls would be sent to {where}"
                       + ("" if target else " (give --to URL, or set upstream, for a sandbox)"), err=True)
        _print_dry_run(plans, target, as_json)
        return
    sending = [p for p in plans if p.skip is None]
    policy_set = _replay_policies(settings) if sending else None
    if sending:
        click.echo(f"replaying {len(sending)} of {len(plans)} calls against {where} ...", err=True)
    outcomes = _replay(plans, target, settings, rp, policy_set)
    if as_json:
        _echo_json([o.as_dict() for o in outcomes])
    else:
        _print_outcomes(outcomes, show_diff)
    errors = [o for o in outcomes if o.error]
    if errors:
        raise click.ClickException(f"{len(errors)} of {len(outcomes)} calls could not be replayed: "
                                   f"call {errors[0].id}: {errors[0].error}")
    differ = [o for o in outcomes if o.result not in ("same", "skipped")]
    if exit_code and differ:
        raise click.ClickException(f"{len(differ)} of {len(sending)} replayed calls were answered otherwise than "
                                   f"recorded: call {_line(differ[0].id)} ({_line(differ[0].action)}): {differ[0].result}")


def _replay_policies(settings: Any) -> Any:
    """The policies in force, which give each role its session policy and duration: a replay does
    not assume a role without them (its credentials would not be scoped down as the gateway's are)."""
    from ..core.policy import PolicySet

    try:
        return PolicySet.load(settings.policies)
    except Exception as e:  # noqa: BLE001 - said, and nothing is sent
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise click.ClickException(
            f"cannot read the policies at {settings.policies} ({_line(first)}): a replay assumes each role with "
            "the session policy and duration the policies give it, and not without them; fix them (agentgate "
            "policy check) or set policies (agentgate.toml or AGENTGATE_POLICIES) to the gateway's. Nothing was "
            "sent") from None


def _replay(plans: list, target: str | None, settings: Any, rp: Any, policy_set: Any) -> list:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from ..core.credentials import CredentialBroker

    broker = CredentialBroker(endpoint_url=target, refresh_margin=60)
    masker = None
    key_path = Path(settings.keys) / "fingerprint.key"
    if key_path.exists():
        from ..core.masking import Masker

        masker = Masker(key_path.read_bytes().strip())
    sending = [p for p in plans if p.skip is None]
    with rp.Replayer(broker, target=target, policy_set=policy_set, masker=masker) as replayer:
        if len(sending) < 10:
            return rp.run(plans, replayer)
        console = Console(stderr=True)
        with Progress(TextColumn("replaying"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                      console=console, transient=True) as progress:
            task = progress.add_task("replay", total=len(plans))
            return rp.run(plans, replayer, progress=lambda _: progress.advance(task))


def _print_dry_run(plans: list, target: str | None, as_json: bool) -> None:
    from urllib.parse import urlsplit

    out = []
    for p in plans:
        c = p.call
        item: dict[str, Any] = {"id": c["id"], "action": c.get("action")}
        if p.skip:
            item["skipped"] = p.skip
        else:
            r = p.request
            base = urlsplit(target) if target else None
            url = (f"{base.scheme}://{base.netloc}{r.path}" + (f"?{r.query}" if r.query else "")) if base else r.url
            item.update({"method": r.method, "url": url, "host": r.host, "role": c.get("role"), "region": r.region,
                         "signing_name": r.signing_name, "headers": [list(h) for h in r.headers],
                         "body_bytes": len(r.body), "body_rebuilt": r.rebuilt,
                         "body": r.body.decode("utf-8", "replace")[:2000]})
        out.append(item)
    if as_json:
        _echo_json(out)
        return
    for item in out:
        if "skipped" in item:
            click.echo(f"skip  {_line(item['id'])}  {_line(item['action'])}: {_line(item['skipped'])}")
            continue
        click.echo(f"send  {_line(item['id'])}  {_line(item['action'])}: {_line(item['method'])} {_line(item['url'])}  "
                   f"(Host: {_line(item['host'])}; signed as {_line(item['role'])} in {_line(item['region'])})")
        for k, v in item["headers"]:
            click.echo(f"        {_line(k)}: {_line(v)}")
        if item["body_bytes"]:
            how = ", rebuilt from the recorded parameters" if item["body_rebuilt"] else ""
            click.echo(f"        body: {item['body_bytes']} bytes{how}: {_line(item['body'][:200])}")


def _print_outcomes(outcomes: list, show_diff: bool) -> None:
    from rich.table import Table

    from .store import _console

    table = Table(box=None, pad_edge=False)
    table.add_column("id", no_wrap=True, min_width=32)
    table.add_column("action", overflow="fold")
    table.add_column("recorded", justify="right")
    table.add_column("now", justify="right")
    table.add_column("result", overflow="fold")
    for o in outcomes:
        result = o.result
        if o.skipped:
            result = f"skipped: {o.skipped}"
        elif o.error:
            result = f"error: {o.error}"
        elif o.changes:
            real = [c for c in o.changes if not c.volatile]
            result += f" ({len(real)} changes" + (f", {len(o.changes) - len(real)} volatile" if len(real) < len(o.changes) else "") + ")"
        table.add_row(_text(o.id), _text(o.action), _text(o.recorded_status), _text(o.status), _text(result))
    console = _console(wide=True)
    console.print(table if outcomes else "no calls")
    counts: dict[str, int] = {}
    for o in outcomes:
        counts[o.result] = counts.get(o.result, 0) + 1
    console.print(", ".join(f"{v} {k}" for k, v in sorted(counts.items())))
    if show_diff:
        for o in outcomes:
            if o.changes:
                click.echo(f"\n{_line(o.id)} {_line(o.action)}: {o.recorded_status} -> {o.status}")
                for c in o.changes:  # one line each: a value an agent wrote cannot print a change of its own
                    click.echo(_line(c.line()))



# -- report ------------------------------------------------------------------------------------


@click.command("report")
@since_option
@until_option
@click.option("-o", "--output", metavar="FILE.html", required=True, help="Where to write the report.")
@click.option("--no-verify", is_flag=True, help="Do not check the hash chains (faster on a very large store).")
@db_option
@key_option
def report(since: str | None, until: str | None, output: str, no_verify: bool, db: str | None,
           key_file: str | None) -> None:
    """Write the assessor's evidence report: one self-contained HTML file.

    Per NIST SP 800-53 control (AU-2, AU-3, AU-9, AU-12, AC-3, AC-5, AC-6, IA-2, IA-9, SC-28): what
    the gateway enforced and where the evidence is; counts by decision, principal and action;
    approvals with approver and time to decision; masked fields; the chain verification result;
    charts. Without --since/--until, the whole store.
    """
    from ..core.report import render_html, summarise

    start, end = _period(since, until)
    protected = _gateway_files(db)
    _check_output(output, protected=protected)
    key = _key(key_file, db)
    with _store(db) as store:
        click.echo("reading the period" + ("" if no_verify else " and verifying the chains") + " ...", err=True)
        summary = summarise(store, since=start, until=end, chain_key=key, check_chain=not no_verify)
    with _output(output, protected) as f:
        f.write(render_html(summary))
    _done(f"the evidence report ({summary.total} records, {summary.start_text} to {summary.end_text}{summary.cut_text})",
          output)
    fail_unreadable(summary.unreadable, "the report is written, naming what its figures leave out")
    _fail_unless_verified(summary)


def _fail_unless_verified(summary) -> None:
    """Evidence written from a store that does not verify says so inside (AU-9 failed); the command
    then exits 1 too, so that a script that makes evidence notices."""
    if summary.verify is not None and not summary.verify.ok:
        more = f" (and {len(summary.verify.problems) - 1} more)" if len(summary.verify.problems) > 1 else ""
        raise click.ClickException(f"written, but the store does not verify: {summary.verify.problems[0]}{more}; "
                                   "`agentgate verify` lists every problem")


COMMANDS = (export, replay, report)
