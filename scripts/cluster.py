"""A local tcpsched cluster in the background: `make cluster`, `make status`, `make stop`.

    scripts/cluster.py start --dir run [--coordinators 1] [--workers 3] [--slots 4]
                             [--policy round-robin] [--port 7001]
    scripts/cluster.py status --dir run [--json]
    scripts/cluster.py restart NAME --dir run [--grace 15]
    scripts/cluster.py stop --dir run [--grace 15]
    scripts/cluster.py addresses --dir run [--port 7001] [--coordinators 1]

`start` launches coordinators on PORT, PORT+1, ... and workers, each detached in its own
session (they outlive this script), with data in DIR/cN, logs in DIR/logs and one pid file per
process in DIR/pids; DIR/cluster.json records the exact command line of each. It starts only
the members that are not running (a member that crashed is started again, with the command
line it had, and tracked again by `stop`) and leaves running ones alone. It returns once a
coordinator answers as leader and every worker has registered, and prints how to connect.
`restart NAME` stops one member (as `stop` does) and starts it again.

A port is free when a server could listen on it: the check binds with the same address reuse
as the coordinators (`socket.create_server`), so sockets left in TIME_WAIT by a member killed
with -9 do not make a restart wait a minute. Output into a pipe that closes (`| head`) ends
the script quietly; the cluster it started keeps running.

`stop` signals exactly the processes of those pid files, and only after checking that the pid
still runs the command line we started (a pid is reused once its process is gone): SIGTERM to
the workers (they drain), then to the coordinators, SIGKILL after a grace, then removes the pid
files. Nothing else is ever signalled.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tcpsched import formatting  # noqa: E402
from tcpsched.client_sync import SyncClient  # noqa: E402
from tcpsched.config import read_token  # noqa: E402
from tcpsched.core.dispatch import POLICIES  # noqa: E402
from tcpsched.errors import TcpschedError  # noqa: E402
from tcpsched.output import silence_stdout  # noqa: E402

MANIFEST = "cluster.json"
HOST = "127.0.0.1"


class ClusterError(Exception):
    """Something the user must fix; printed as one line."""


# -- processes we own ---------------------------------------------------------------------------


def is_ours(pid: int, argv: list[str]) -> bool:
    """Whether `pid` still runs exactly the command line we started it with (a zombie, whose
    command line is empty, is not: it has already ended)."""
    if Path("/proc/self").exists():
        try:
            raw = Path(f"/proc/{pid}/cmdline").read_bytes()
            if not raw:
                # Empty: a zombie, or a process in the middle of its exec (the new image's
                # arguments are not set up yet, right after Popen returns). Only the first
                # has ended.
                stat = Path(f"/proc/{pid}/stat").read_text()
                return stat[stat.rindex(")") + 2 :][:1] not in ("Z", "X")
        except (OSError, ValueError):
            return False
        return raw.rstrip(b"\0").split(b"\0") == [a.encode() for a in argv]
    # No /proc (macOS, BSD): ps prints the arguments joined by spaces.
    result = subprocess.run(["ps", "-o", "args=", "-p", str(pid)], capture_output=True,
                            text=True, check=False)
    return result.returncode == 0 and result.stdout.strip() == " ".join(argv)


def pid_path(run_dir: Path, name: str) -> Path:
    return run_dir / "pids" / f"{name}.pid"


def read_manifest(run_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((run_dir / MANIFEST).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ClusterError(f"cannot read {run_dir / MANIFEST}: {exc}") from None


def write_manifest(run_dir: Path, manifest: dict[str, Any]) -> None:
    tmp = run_dir / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    tmp.replace(run_dir / MANIFEST)


def owned(run_dir: Path, manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """The manifest's processes whose pid file exists, each with `pid` and `alive` set."""
    out = []
    for proc in manifest.get("procs", []):
        path = pid_path(run_dir, proc["name"])
        try:
            pid = int(path.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
        out.append({**proc, "pid": pid, "alive": is_ours(pid, proc["argv"])})
    return out


def spawn(run_dir: Path, manifest: dict[str, Any], name: str, *, role: str, argv: list[str],
          env: dict[str, str], address: str | None = None) -> None:
    log_path = run_dir / "logs" / f"{name}.log"
    with open(log_path, "ab") as log:
        # A new session: Ctrl-C in the terminal that ran `make cluster` does not reach it, and
        # it outlives this script.
        popen = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                 stderr=subprocess.STDOUT, cwd=run_dir, env=env,
                                 start_new_session=True, close_fds=True)
    pid_path(run_dir, name).write_text(f"{popen.pid}\n")
    entry = {"name": name, "role": role, "argv": argv, "address": address,
             "log": str(log_path)}
    manifest["procs"] = [*(p for p in manifest["procs"] if p["name"] != name), entry]
    write_manifest(run_dir, manifest)
    popen.returncode = 0  # we never wait for it: keep Popen.__del__ from warning


# -- start --------------------------------------------------------------------------------------


def coordinator_addresses(port: int, count: int) -> list[str]:
    return [f"{HOST}:{port + i}" for i in range(count)]


def port_is_free(port: int) -> bool:
    """Whether a coordinator could listen on `port` now: bound exactly as it binds
    (`socket.create_server`, which sets SO_REUSEADDR), so TIME_WAIT does not count as busy."""
    try:
        socket.create_server((HOST, port)).close()
    except OSError:
        return False
    return True


def member_argvs(args: argparse.Namespace, run_dir: Path, addresses: list[str]
                 ) -> list[dict[str, Any]]:
    """Every member the settings ask for: name, role, command line and address."""
    token = ["--token-file", str(Path(args.token_file).resolve())] if args.token_file else []
    python = sys.executable
    members = []
    for i, address in enumerate(addresses, start=1):
        peers = [f"--peer={j}@{a}" for j, a in enumerate(addresses, start=1) if j != i]
        # The dashboard on HTTP_PORT, HTTP_PORT+1, ...: at one offset from the TCP ports, so
        # a follower finds the leader's HTTP address by the convention (runtime/http/app.py).
        web = ["--http", f"{HOST}:{args.http_port + i - 1}"] if args.http_port else []
        argv = [python, "-m", "tcpsched.coordinator", "--id", str(i), "--listen", address,
                "--data-dir", str(run_dir / f"c{i}"), "--policy", args.policy,
                "--log-level", args.log_level, *peers, *token, *web]
        members.append({"name": f"c{i}", "role": "coordinator", "argv": argv,
                        "address": address})
    for i in range(1, args.workers + 1):
        argv = [python, "-m", "tcpsched.worker", "--coordinators", ",".join(addresses),
                "--name", f"w{i}", "--slots", str(args.slots), "--drain-timeout",
                str(args.drain_timeout), "--log-level", args.log_level, *token]
        members.append({"name": f"w{i}", "role": "worker", "argv": argv, "address": None})
    return members


def child_env() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)}
    env.pop("TCPSCHED_COORDINATORS", None)
    return env


def start_missing(run_dir: Path, manifest: dict[str, Any], members: list[dict[str, Any]]
                  ) -> list[str]:
    """Start every member of `members` that is not running (checking coordinator ports
    first); returns the names started."""
    running = {p["name"] for p in owned(run_dir, manifest) if p["alive"]}
    missing = [p for p in members if p["name"] not in running]
    busy = [p["address"] for p in missing
            if p["address"] and not port_is_free(int(p["address"].rsplit(":", 1)[1]))]
    if busy:
        port = int(members[0]["address"].rsplit(":", 1)[1])
        raise ClusterError(f"port(s) already in use: {', '.join(busy)}; choose others with "
                           f"PORT=... (make cluster PORT={port + 100})")
    env = child_env()
    for p in missing:
        pid_path(run_dir, p["name"]).unlink(missing_ok=True)
        spawn(run_dir, manifest, p["name"], role=p["role"], argv=p["argv"], env=env,
              address=p["address"])
    return [p["name"] for p in missing]


def start(args: argparse.Namespace) -> int:
    run_dir = Path(args.dir).resolve()
    addresses = coordinator_addresses(args.port, args.coordinators)
    members = member_argvs(args, run_dir, addresses)
    for sub in ("logs", "pids"):
        (run_dir / sub).mkdir(parents=True, exist_ok=True)
    if args.token_file:
        read_token(args.token_file)  # fail now, with one line, rather than in every process
    manifest = read_manifest(run_dir)
    if manifest is not None and manifest.get("coordinators") != addresses:
        if any(p["alive"] for p in owned(run_dir, manifest)):
            raise ClusterError(f"a cluster with other coordinators "
                               f"({','.join(manifest.get('coordinators', []))}) runs from "
                               f"{args.dir}/; `make stop` first")
        clean(run_dir, manifest)
        manifest = None
    if manifest is None:
        manifest = {"coordinators": addresses, "started_at": time.time(), "procs": [],
                    "settings": {"workers": args.workers, "slots": args.slots,
                                 "policy": args.policy}}
        write_manifest(run_dir, manifest)
    # Members running from another invocation keep their command lines; the rest are
    # started with what these settings say.
    started = start_missing(run_dir, manifest, members)
    names = [p["name"] for p in members if p["role"] == "worker"]
    try:
        leader = wait_ready(run_dir, manifest, names, args.timeout, args.token_file)
    except BaseException:  # not ready, or Ctrl-C: leave nothing half-started behind
        stop_processes(run_dir, manifest, grace=3.0, quiet=True,
                       only=set(started) if len(started) < len(members) else None)
        raise
    if started and len(started) < len(members):
        print(f"started {', '.join(started)}; the other members were already running")
    elif not started:
        print("every member was already running; nothing started")
    python = sys.executable
    py = shown(python)
    joined = ",".join(addresses)
    print(f"cluster up: {len(addresses)} coordinator(s), {len(names)} worker(s) with "
          f"{args.slots} slots, policy {args.policy}; data and logs under {shown(run_dir)}/")
    print(f"  leader c{leader['id']} at {leader['address']}, epoch {leader['epoch']}")
    if len(addresses) > 1 and "not supported yet" in Path(manifest["procs"][0]["log"]).read_text():
        print("  note: these coordinators do not form a group yet; each runs alone, and each "
              "worker serves the first one it reached")
    if args.http_port:
        print(f"  dashboard: http://{HOST}:{args.http_port + leader['id'] - 1}/ (the leader's; "
              f"any of {args.http_port}-{args.http_port + len(addresses) - 1} redirects "
              "there), REST API under /api, Prometheus metrics at /metrics")
    print("connect:")
    overrides = "".join(
        f" {name}={value}" for name, value, default in (
            ("RUN", args.dir, "run"), ("PORT", args.port, 7001),
            ("COORDINATORS", args.coordinators, 3),
        ) if str(value) != str(default)
    )  # fmt: skip
    print(f"  make console{overrides}")
    print(f"  {py} -m tcpsched.console --coordinators {joined}")
    print(f"  {py} -m tcpsched --coordinators {joined} submit --shell 'echo hello'")
    print(f"  export TCPSCHED_COORDINATORS={joined}   # then: {py} -m tcpsched list")
    print(f"then: make status{overrides}, make stop{overrides}")
    return 0


def wait_ready(run_dir: Path, manifest: dict[str, Any], names: list[str], timeout: float,
               token_file: str | None) -> dict[str, Any]:
    """Until a leader answers and every worker is registered and alive; or ClusterError.
    (The client follows the leader, and workers register with the leader only.)"""
    deadline = time.monotonic() + timeout
    token = read_token(token_file)
    cluster = SyncClient(manifest["coordinators"], token, connect_timeout=1.0)
    waiting_for = "a leader"
    try:
        while time.monotonic() < deadline:
            dead = [p for p in owned(run_dir, manifest) if not p["alive"]]
            if dead:
                tail = _tail(Path(dead[0]["log"]))
                raise ClusterError(f"{dead[0]['name']} exited at start; its log ends with: "
                                   f"{tail}")
            try:
                leader = cluster.leader()
                waiting_for = f"workers {', '.join(names)} to register"
                alive = {w["name"] for w in cluster.workers() if w["state"] == "alive"}
                if set(names) <= alive:
                    return leader
            except TcpschedError:
                pass
            time.sleep(0.1)
    finally:
        cluster.close()
    raise ClusterError(f"timed out after {timeout:g}s waiting for {waiting_for}; logs are "
                       f"in {run_dir / 'logs'}")


def shown(path: str | Path) -> str:
    """A path as short as it can be said from here."""
    relative = os.path.relpath(path)
    return str(path) if relative.startswith("..") else relative


def _tail(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return lines[-1] if lines else "(empty log)"


# -- stop ---------------------------------------------------------------------------------------


def stop(args: argparse.Namespace) -> int:
    run_dir = Path(args.dir).resolve()
    manifest = read_manifest(run_dir)
    if manifest is None:
        print(f"no cluster was started from {args.dir}/ (no {MANIFEST}); nothing to stop")
        return 0
    stop_processes(run_dir, manifest, args.grace)
    return 0


def restart(args: argparse.Namespace) -> int:
    """Stop one member (if it runs) and start it again with the same command line."""
    run_dir = Path(args.dir).resolve()
    manifest = read_manifest(run_dir)
    if manifest is None:
        raise ClusterError(f"no cluster was started from {args.dir}/; `make cluster` first")
    member = next((p for p in manifest.get("procs", []) if p["name"] == args.name), None)
    if member is None:
        names = ", ".join(p["name"] for p in manifest.get("procs", []))
        raise ClusterError(f"no member {args.name!r} in {args.dir}/ (members: {names})")
    stop_processes(run_dir, manifest, args.grace, only={args.name}, keep_manifest=True)
    start_missing(run_dir, manifest, [member])
    workers = [p["name"] for p in manifest["procs"] if p["role"] == "worker"]
    leader = wait_ready(run_dir, manifest, workers, args.timeout, args.token_file)
    print(f"{args.name} restarted; leader c{leader['id']} at {leader['address']}")
    return 0


def stop_processes(run_dir: Path, manifest: dict[str, Any], grace: float, *,
                   quiet: bool = False, only: set[str] | None = None,
                   keep_manifest: bool = False) -> None:
    """Stop the manifest's processes (or `only` those named): SIGTERM, SIGKILL after the
    grace; the pid files go, and the manifest too unless members are left or it is kept."""
    procs = [p for p in owned(run_dir, manifest) if only is None or p["name"] in only]
    # Workers first: they drain and hand their results to a coordinator that is still up.
    for role in ("worker", "coordinator"):
        group = [p for p in procs if p["role"] == role and p["alive"]]
        for p in group:
            _signal(p["pid"], signal.SIGCONT)  # a stopped process cannot act on SIGTERM
            _signal(p["pid"], signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(is_ours(p["pid"], p["argv"]) for p in group):
            time.sleep(0.05)
        for p in group:
            if is_ours(p["pid"], p["argv"]):
                _signal(p["pid"], signal.SIGKILL)
                p["killed"] = True
    for p in procs:
        for _ in range(100):  # SIGKILL is not instant; never leave before the pid is gone
            if not is_ours(p["pid"], p["argv"]):
                break
            time.sleep(0.05)
        if not quiet:
            how = ("killed after the grace" if p.get("killed") else "stopped") if p["alive"] \
                else "was not running"
            print(f"{p['name']:<4} pid {p['pid']:<8} {how}")
    if only is None and not keep_manifest:
        clean(run_dir, manifest)
        return
    for p in procs:
        pid_path(run_dir, p["name"]).unlink(missing_ok=True)


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def clean(run_dir: Path, manifest: dict[str, Any]) -> None:
    for proc in manifest.get("procs", []):
        pid_path(run_dir, proc["name"]).unlink(missing_ok=True)
    (run_dir / MANIFEST).unlink(missing_ok=True)


# -- status and addresses -----------------------------------------------------------------------


def status(args: argparse.Namespace) -> int:
    run_dir = Path(args.dir).resolve()
    manifest = read_manifest(run_dir)
    if manifest is None:
        if args.json:
            print(json.dumps({"processes": [], "workers": None}))
        else:
            print(f"no cluster running from {args.dir}/ (start one with `make cluster`)")
        return 1
    procs = owned(run_dir, manifest)
    leader: dict[str, Any] | None = None
    workers: list[dict[str, Any]] | None = None
    stats: dict[str, Any] | None = None
    error = None
    client = SyncClient(manifest["coordinators"], read_token(args.token_file),
                        connect_timeout=2.0)
    try:
        leader, workers, stats = client.leader(), client.workers(), client.stats()
    except TcpschedError as exc:
        error = str(exc)
    finally:
        client.close()
    for p in procs:
        p["role_now"] = p["role"]
        if leader is not None and p["role"] == "coordinator":
            p["role_now"] = "leader" if p["address"] == leader["address"] else "follower"
    if args.json:
        print(json.dumps({"processes": [{k: p[k] for k in ("name", "role", "pid", "alive",
                                                           "address", "log")} for p in procs],
                          "leader": leader, "workers": workers, "stats": stats}, indent=2))
    else:
        rows = [[p["name"], p["role_now"], str(p["pid"]), "yes" if p["alive"] else "NO",
                 p["address"] or "-", shown(p["log"])] for p in procs]
        print(formatting.table(("NAME", "ROLE", "PID", "ALIVE", "ADDRESS", "LOG"), rows))
        print()
        if error is not None:
            print(f"cluster: {error}")
        else:
            assert workers is not None and stats is not None and leader is not None
            print(f"leader c{leader['id']} at {leader['address']}, epoch {leader['epoch']}; "
                  f"pending {stats['pending']}, running {stats['running']}, succeeded "
                  f"{stats['succeeded']}, failed {stats['failed']}")
            print(formatting.workers_table(workers))
    healthy = error is None and procs and all(p["alive"] for p in procs)
    return 0 if healthy else 1


def addresses(args: argparse.Namespace) -> int:
    manifest = read_manifest(Path(args.dir).resolve())
    found = manifest["coordinators"] if manifest else coordinator_addresses(args.port,
                                                                          args.coordinators)
    print(",".join(found))
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="scripts/cluster.py", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="action", required=True)
    s = sub.add_parser("start", help="start coordinators and workers in the background")
    s.add_argument("--coordinators", type=int, default=3, metavar="N")
    s.add_argument("--workers", type=int, default=3, metavar="N")
    s.add_argument("--slots", type=int, default=4, metavar="N")
    s.add_argument("--policy", choices=POLICIES, default="round-robin")
    s.add_argument("--port", type=int, default=7001, help="first coordinator's port (7001)")
    s.add_argument("--http-port", type=int, default=8001, metavar="PORT",
                   help="first coordinator's dashboard port (8001; 0: no dashboard)")
    s.add_argument("--drain-timeout", type=float, default=10.0, metavar="S")
    s.add_argument("--log-level", default="info")
    s.add_argument("--timeout", type=float, default=30.0, metavar="S",
                   help="give up if the cluster is not ready after S seconds (30)")
    s.add_argument("--token-file", default=None, metavar="F")
    r = sub.add_parser("restart", help="stop one member and start it again")
    r.add_argument("name", metavar="NAME", help="the member: c1, c2, ..., w1, w2, ...")
    r.add_argument("--grace", type=float, default=15.0, metavar="S",
                   help="seconds between SIGTERM and SIGKILL (15)")
    r.add_argument("--timeout", type=float, default=30.0, metavar="S",
                   help="give up if the cluster is not ready after S seconds (30)")
    r.add_argument("--token-file", default=None, metavar="F")
    t = sub.add_parser("stop", help="stop the processes started from --dir")
    t.add_argument("--grace", type=float, default=15.0, metavar="S",
                   help="seconds between SIGTERM and SIGKILL (15)")
    u = sub.add_parser("status", help="the processes and the cluster's workers")
    u.add_argument("--json", action="store_true")
    u.add_argument("--token-file", default=None, metavar="F")
    a = sub.add_parser("addresses", help="the coordinator addresses, comma-separated")
    a.add_argument("--port", type=int, default=7001)
    a.add_argument("--coordinators", type=int, default=3)
    for each in (s, r, t, u, a):
        each.add_argument("--dir", default="run", help="where data, logs and pid files go (run)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.action == "start" and (args.coordinators < 1 or args.workers < 0 or args.slots < 1):
        print("error: need at least 1 coordinator and 1 slot per worker", file=sys.stderr)
        return 2
    try:
        return {"start": start, "restart": restart, "stop": stop, "status": status,
                "addresses": addresses}[args.action](args)
    except BrokenPipeError:
        # `make cluster | head`: the reader has seen enough; what was started keeps running.
        silence_stdout()
        return 0
    except (ClusterError, TcpschedError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
