"""Dependencies, groups (`map`) and retry with real coordinators and workers on loopback.

Shell jobs append a word to an effects file, so the order they ran in is read from disk, not
from what the coordinator says; a gate file holds a parent until the test lets it finish.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

from tcpsched.client_sync import SyncClient
from tcpsched.testing.processes import ProcessGroup, wait_for_workers, wait_until
from tests.conftest import connect
from tests.integration.test_failures import Clients, clients, start  # noqa: F401
from tests.integration.test_peers import start_group, wait_leader

WAIT_S = 60.0


def cli(address: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tcpsched", "--coordinators", address, *args],
                          capture_output=True, text=True, timeout=120, check=False)


def test_three_level_dag_runs_in_order_and_a_failing_parent_cancels_its_subtree(
        procs: ProcessGroup, clients: Clients, tmp_path: Path) -> None:  # noqa: F811
    """a -> (b, c) -> d runs a first, d last (effects file); a failing parent's children and
    grandchildren end cancelled naming their parent, and never run; `submit --after` of an
    unknown job exits 2 with one line."""
    address, client, _ = start(procs, clients, ["w1", "w2"], slots=2)
    effects = tmp_path / "effects"
    a = client.submit_shell(f"sleep 0.3; echo a >> {effects}")
    b = client.submit_shell(f"echo b >> {effects}", after=[a])
    done = cli(address, "--json", "submit", "--after", a[:6], "--shell", f"echo c >> {effects}")
    assert done.returncode == 0, done.stderr
    c = json.loads(done.stdout)["id"]
    d = client.submit_shell(f"echo d >> {effects}", after=[b, c])
    bad = client.submit_shell(f"echo bad >> {effects}; exit 3")
    child = client.submit_shell(f"echo child >> {effects}", after=[bad])
    grandchild = client.submit_shell(f"echo grandchild >> {effects}", after=[child])
    records = client.wait_records([a, b, c, d, bad, child, grandchild], timeout=WAIT_S)
    states = {r["id"]: r["state"] for r in records}
    assert [states[j] for j in (a, b, c, d)] == ["succeeded"] * 4
    words = effects.read_text().split()
    assert words.index("a") < words.index("b") < words.index("d")
    assert words.index("a") < words.index("c") < words.index("d")
    assert "child" not in words and "grandchild" not in words
    assert client.status(child)["reason"] == f"parent {bad} failed"
    assert client.status(grandchild)["reason"] == f"parent {child} cancelled"
    unknown = cli(address, "submit", "--after", "nosuchjob", "--shell", "true")
    assert unknown.returncode == 2, unknown.stderr
    assert len(unknown.stderr.strip().splitlines()) == 1
    assert "unknown parent" in unknown.stderr and "Traceback" not in unknown.stderr


def test_map_of_10000_items_in_chunks_of_100_gathers_in_item_order(
        procs: ProcessGroup, clients: Clients, tmp_path: Path) -> None:  # noqa: F811
    """`map --chunk-size 100` over 10,000 items makes 100 jobs of one group; gathered, the
    results are every item's, in item order; status/list/wait --group agree; a bad line of
    the items file is refused naming it."""
    address, client, _ = start(procs, clients, ["w1", "w2"], slots=2)
    items = tmp_path / "items.jsonl"
    items.write_text("".join(f"{i}\n" for i in range(10_000)))
    done = cli(address, "--json", "map", "--call", "operator:neg", "--items", str(items),
               "--chunk-size", "100")
    assert done.returncode == 0, done.stderr
    value = json.loads(done.stdout)
    group, ids = value["group"], value["ids"]
    assert len(ids) == 100
    assert client.gather_results(ids, timeout=WAIT_S) == [-i for i in range(10_000)]
    waited = cli(address, "--json", "wait", "--group", group, "--timeout", "30")
    assert waited.returncode == 0, waited.stderr
    assert [r["id"] for r in json.loads(waited.stdout)] == ids
    summary = json.loads(cli(address, "--json", "status", "--group", group).stdout)
    assert summary["counts"]["succeeded"] == 100 and summary["progress"] == 1.0
    assert summary["eta_s"] == 0.0
    listed = json.loads(cli(address, "--json", "list", "--group", group, "--limit", "5").stdout)
    assert [r["id"] for r in listed] == ids[::-1][:5]
    assert all(r["group"] == group for r in listed)
    items.write_text('1\n2\n{"oops"\n')
    bad = cli(address, "map", "--call", "operator:neg", "--items", str(items))
    assert bad.returncode == 2 and "line 3" in bad.stderr, bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


def test_retry_revives_a_quarantined_job(procs: ProcessGroup, clients: Clients,  # noqa: F811
                                         tmp_path: Path) -> None:
    """A job that killed three workers is failed "lost 3 workers"; once its cause is gone,
    `retry` requeues it under the same id, its attempts go on, and it succeeds."""
    names = ["w1", "w2", "w3"]
    address, client, workers = start(procs, clients, names)
    cured = tmp_path / "cured"
    poison = client.submit_shell(f"[ -e {cured} ] || kill -KILL $PPID")

    def restart_the_dead() -> bool:
        for name, proc in list(workers.items()):
            if not proc.alive():
                workers[name] = procs.worker(address, name, slots=1)
        return client.status(poison)["state"] in ("failed", "succeeded")

    wait_until(restart_the_dead, WAIT_S, interval=0.3, what="the poison job to end")
    record = client.status(poison)
    assert (record["state"], record["reason"], record["attempts"]) == \
        ("failed", "lost 3 workers", 3)
    cured.write_text("")
    restart_the_dead()
    done = cli(address, "--json", "retry", poison)
    assert done.returncode == 0, done.stderr
    assert [r["id"] for r in json.loads(done.stdout)] == [poison]
    record = client.wait(poison, timeout=WAIT_S)
    assert record["state"] == "succeeded" and record["attempts"] == 4


def test_dependencies_survive_a_leader_kill(procs: ProcessGroup, tmp_path: Path) -> None:
    """With 3 coordinators, kill -9 of the leader while a parent runs: the new leader rebuilds
    the waiting children from the replicated table, releases them in order when the parent
    succeeds, and cancels the child of a parent that fails."""
    group, addresses = start_group(procs)
    procs.worker(addresses, "w1", slots=4)
    wait_leader(addresses, 3)
    effects, gate = tmp_path / "effects", tmp_path / "gate"
    hold = f"while [ ! -e {gate} ]; do sleep 0.05; done"
    with SyncClient(addresses, connect_timeout=20.0) as client:
        wait_for_workers(client, ["w1"])
        parent = client.submit_shell(f"{hold}; echo parent >> {effects}")
        child = client.submit_shell(f"echo child >> {effects}", after=[parent])
        grandchild = client.submit_shell(f"echo grandchild >> {effects}", after=[child])
        failing = client.submit_shell(f"{hold}; exit 1")
        doomed = client.submit_shell(f"echo doomed >> {effects}", after=[failing])
        wait_until(lambda: client.status(parent)["state"] == "running"
                   and client.status(failing)["state"] == "running", WAIT_S,
                   what="the parents running")
        assert client.status(child)["reason"] == f"waiting on parents: {parent}"
    group[3][0].signal(signal.SIGKILL)
    wait_leader(addresses, 2, timeout=30.0)
    with connect(addresses, timeout=20.0) as client:
        assert client.status(grandchild)["reason"] == f"waiting on parents: {child}"
        gate.write_text("")
        records = client.wait_records([parent, child, grandchild, failing, doomed],
                                      timeout=WAIT_S)
        assert [r["state"] for r in records] == ["succeeded", "succeeded", "succeeded",
                                                 "failed", "cancelled"]
        assert records[4]["error"] == f"parent {failing} failed"
        assert client.status(doomed)["reason"] == f"parent {failing} failed"
    assert effects.read_text().split() == ["parent", "child", "grandchild"]
