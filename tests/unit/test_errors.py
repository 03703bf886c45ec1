"""Clear errors at the edges: bounds named by the CLI, bad addresses as usage errors, jobs the
coordinator would refuse refused before sending, ambiguous prefixes listed, bad worker names
refused at registration, and times that are not finite refused by the codec and the records."""

from __future__ import annotations

import asyncio
import math
import random

import msgpack
import pytest

from tcpsched import cli
from tcpsched.client import Client
from tcpsched.config import parse_coordinators, worker_settings
from tcpsched.core import messages as m
from tcpsched.core.codec import HEADER, FrameDecoder, to_wire
from tcpsched.core.events import Close, Connected, Received
from tcpsched.core.jobs import JobRecord, JobSpec
from tcpsched.core.queries import not_found_message
from tcpsched.core.records import job_from_dict, job_to_dict
from tcpsched.core.scheduler import Scheduler, SchedulerConfig
from tcpsched.core.state import JobTable
from tcpsched.errors import ConfigError, RemoteProtocolError, RequestError

# -- the CLI's numbers ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["wait", "abcd", "--timeout", "nan"], "--timeout must be at least 0 seconds and at "
                                               "most 31536000 seconds, not 'nan'"),
        (["wait", "abcd", "--timeout", "inf"], "at most 31536000"),
        (["submit", "--delay", "1e12", "--shell", "true"], "--delay must be at least 0 seconds "
                                                           "and at most 31536000 seconds, not "
                                                           "'1e12'"),
        (["submit", "--delay", "-1", "--shell", "true"], "must be at least 0 seconds and"),
        (["submit", "--timeout", "0", "--shell", "true"], "--timeout must be more than 0 "
                                                          "seconds (at least 0.001)"),
        (["submit", "--timeout", "1e-9", "--shell", "true"], "(at least 0.001) and at most "
                                                             "31536000 seconds, not '1e-9'"),
        (["submit", "--priority", "99999999", "--shell", "true"], "at most 1000000"),
        (["submit", "--retries", "x", "--shell", "true"], "not 'x', which is not an integer"),
        (["submit", "--retries", "-1", "--shell", "true"], "--retries must be at least 0 and "
                                                           "at most 1000, not '-1'"),
        (["list", "--limit", "0"], "--limit must be at least 1"),
    ],
)
def test_out_of_range_numbers_name_the_real_bounds(argv: list[str], says: str,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """wait --timeout nan, --delay 1e12, --delay -1, --timeout 1e-9: exit 2, one line that
    names the accepted bounds, no traceback."""
    assert cli.main(["--coordinators", "127.0.0.1:9", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and says in err, err


def test_a_spec_names_its_bounds() -> None:
    """The Python API's own check names the bounds too (and refuses NaN)."""
    for delay in (1e12, -1.0, math.nan):
        with pytest.raises(ValueError, match="at least 0 and at most 31536000"):
            JobSpec(kind="shell", command="true", delay=delay)
    with pytest.raises(ValueError, match="more than 0 and at most 31536000"):
        JobSpec(kind="shell", command="true", timeout=math.nan)


# -- addresses -----------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["a;b", "http://127.0.0.1:7001", "127.0.0.1:7001;127.0.0.1:7002",
                                   "a;b:7001", "host name:7001"])
def test_bad_coordinators_variable_is_a_usage_error_naming_it(
        value: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """A bad $TCPSCHED_COORDINATORS exits 2 naming the variable, before any name lookup."""
    monkeypatch.setenv("TCPSCHED_COORDINATORS", value)
    with pytest.raises(ConfigError, match=r"^\$TCPSCHED_COORDINATORS: address"):
        parse_coordinators(None)
    assert cli.main(["stats"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "$TCPSCHED_COORDINATORS" in err, err


@pytest.mark.parametrize("value", ["localhost:7001", "127.0.0.1:7001,10.0.0.2:7002",
                                   "[::1]:7001", "::1:7001", "build_host.example.com:1"])
def test_good_coordinator_addresses_pass(value: str) -> None:
    """Host names, IPv4, bracketed and bare IPv6 are accepted."""
    assert parse_coordinators(value)


def test_worker_with_a_bad_name_or_tag_is_a_usage_error() -> None:
    """A worker refuses to start with a name or tag that could not be shown safely."""
    with pytest.raises(ConfigError, match=r"^--name: worker name 'w\\n1'"):
        worker_settings(["--name", "w\n1"])
    with pytest.raises(ConfigError, match=r"^--tags: worker tag 'g\\x1b'"):
        worker_settings(["--name", "w1", "--tags", "g\x1b"])


# -- what the coordinator would refuse, refused before sending ------------------------------------


def _submit_error(*args: object, command: str | None = None) -> str:
    async def attempt() -> str:
        # Nobody listens on port 9: reaching the network would be "no coordinator reachable".
        client = Client("127.0.0.1:9", connect_timeout=0.1)
        try:
            if command is not None:
                await client.submit_shell(command)
            else:
                await client.submit_call("builtins:len", *args)
        except RequestError as exc:
            return str(exc)
        finally:
            await client.close()
        raise AssertionError("submitted")

    return asyncio.run(attempt())


def test_args_over_the_item_limits_are_too_large_before_sending() -> None:
    """An array over 200,000 items or a map over 100,000 is refused as too large, locally."""
    assert "job too large to send" in _submit_error([0] * 250_000)
    assert "array of 250000 items" in _submit_error([[0] * 250_000])
    assert "map of 100001 items" in _submit_error({str(i): 0 for i in range(100_001)})


def test_text_that_is_not_utf8_is_one_clear_error() -> None:
    """A command or argument with a byte that is not UTF-8 (as argv gives it) says so."""
    message = _submit_error(command="echo \udcff")
    assert message == ("cannot send the job: the command is not valid UTF-8 text: it holds "
                       "the byte 0xff at character 5 (tcpsched sends text as UTF-8)")
    assert "argument is not valid UTF-8" in _submit_error("a\udcfe")


# -- ambiguous prefixes --------------------------------------------------------------------------


def _table(*ids: str) -> JobTable:
    table = JobTable()
    for seq, job_id in enumerate(ids, 1):
        job = JobRecord(id=job_id, seq=seq, spec=JobSpec(kind="shell", command="true"))
        table.apply({"op": "submit", "job": job_to_dict(job)})
    return table


def test_an_ambiguous_prefix_says_so_and_lists_candidates() -> None:
    """A prefix matching several jobs is "ambiguous" and names them; none is "no job"."""
    table = _table("abcd00000001", "abcd00000002", "ffff00000000")
    message = not_found_message(table, "abcd")
    assert "ambiguous" in message and "abcd00000001, abcd00000002" in message
    assert not_found_message(table, "0123") == (
        "no job '0123' (no job has that id, key or id prefix)")
    assert "at least 4 characters" in not_found_message(table, "ab")
    many = _table(*(f"abcd{i:08x}" for i in range(50)))
    assert "more than 5 jobs" in not_found_message(many, "abcd")


def test_the_scheduler_answers_an_ambiguous_status_with_candidates() -> None:
    """status and cancel of an ambiguous prefix get a not_found error that lists the jobs."""
    sched = Scheduler(SchedulerConfig(), random.Random(1), 0.0)
    sched.step(Connected(1, "client", "c"), 0.0)
    ids: list[str] = []
    for _ in range(2000):
        ids.append(sched.submit(JobSpec(kind="shell", command="true", delay=60), 0.0))
    prefixes = [i[:4] for i in ids]
    prefix = next(p for p in prefixes if prefixes.count(p) > 1)
    for msg in (m.Status(req_id=1, job_ids=(prefix,)), m.Cancel(req_id=2, job_id=prefix)):
        effects = sched.step(Received(1, msg), 0.0)
        (error,) = [e.msg for e in effects if isinstance(getattr(e, "msg", None), m.ErrorReply)]
        assert "ambiguous" in error.message
        assert all(i in error.message for i in ids if i.startswith(prefix))


# -- worker names at registration ---------------------------------------------------------------


def test_registration_with_a_bad_name_is_refused() -> None:
    """A Register whose name or tag holds control characters is refused, never listed."""
    sched = Scheduler(SchedulerConfig(), random.Random(1), 0.0)
    for conn, (name, tags) in enumerate([("evil\nINFO forged", ()), ("w1", ("a\x1b[8m",))], 1):
        sched.step(Connected(conn, "worker", "x"), 0.0)
        effects = sched.step(Received(conn, m.Register(name=name, slots=1, tags=tags)), 0.0)
        (close,) = [e for e in effects if isinstance(e, Close)]
        assert close.reason.startswith("registration refused: worker")
        assert "\n" not in close.reason and "\x1b" not in close.reason
    assert sched.worker_list() == []


# -- times that are not finite -------------------------------------------------------------------


def _frame(body: dict[str, object]) -> bytes:
    packed = msgpack.packb(body, use_bin_type=True)
    return HEADER.pack(len(packed)) + packed


@pytest.mark.parametrize("field", ["started_at", "finished_at"])
@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
def test_a_result_with_a_non_finite_time_is_a_protocol_error(field: str, value: float) -> None:
    """A worker's Result with started_at=inf (or NaN) is a RemoteProtocolError."""
    good = m.Result(job_id="j", attempt=1, state="succeeded", exit_code=0, result=None,
                    stdout="", stderr="", error=None, started_at=1.0, finished_at=2.0)
    body = {**to_wire(good), field: value}
    decoder = FrameDecoder(allowed=m.WORKER_TO_COORDINATOR)
    decoder.feed(_frame(body))
    with pytest.raises(RemoteProtocolError, match="finite"):
        decoder.next_message()
    with pytest.raises(ValueError, match="finite"):
        m.Result(**{**{k: v for k, v in body.items() if k != "t"}})  # type: ignore[arg-type]


def test_a_wait_with_an_infinite_timeout_is_a_protocol_error() -> None:
    """Every float on the wire is a time or a duration: infinity is refused like NaN."""
    decoder = FrameDecoder(allowed=m.CLIENT_REQUESTS)
    decoder.feed(_frame({"t": "wait", "req_id": 1, "job_ids": ["abcd"], "timeout": math.inf}))
    with pytest.raises(RemoteProtocolError, match="finite"):
        decoder.next_message()


def test_records_refuse_non_finite_times() -> None:
    """A job record, and a journal submit record, with a non-finite time are refused."""
    spec = JobSpec(kind="shell", command="true")
    with pytest.raises(ValueError, match="started_at must be a finite number"):
        JobRecord(id="j", seq=1, spec=spec, started_at=math.inf)
    good = job_to_dict(JobRecord(id="j", seq=1, spec=spec, submitted_at=5.0))
    for field in ("submitted_at", "not_before", "finished_at"):
        with pytest.raises(ValueError, match="not finite"):
            job_from_dict({**good, field: math.inf})
    assert job_from_dict(good).submitted_at == 5.0
