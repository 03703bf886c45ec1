"""scripts/bench.py runs end to end at tiny sizes and prints a parseable document.

Not a benchmark: no figure is compared with a bound (the machine is shared); only that every
section ran, measured something and reported it in the JSON document and the table rows.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "scripts" / "bench.py"
TINY = ["--coordinators", "1", "--jobs", "40", "--latency-samples", "10", "--submits", "10",
        "--shell-jobs", "5", "--calls", "40", "--queued", "20,50", "--queued-batch", "20",
        "--worker-counts", "2,5", "--idle-s", "0.2", "--scale-jobs", "20", "--json"]
SECTIONS = ["throughput", "latency", "submits", "shell", "calls", "paired", "queued", "workers"]


def run_bench(*extra: str) -> dict:
    done = subprocess.run([sys.executable, str(BENCH), *TINY, *extra], capture_output=True,
                          text=True, timeout=300, cwd=ROOT, check=False)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout)


def test_every_section_reports_figures_in_json() -> None:
    """Each cluster section runs at tiny sizes and reports positive figures and table rows."""
    doc = run_bench(*(arg for name in SECTIONS for arg in ("--only", name)))
    results = doc["results"]
    assert results["throughput"]["end_to_end"]["value"] > 0
    assert results["throughput.thread"]["end_to_end"]["value"] > 0
    assert results["isolation"]["process_vs_thread"]["value"] > 0
    assert 0 < results["latency"]["p50"]["value"] <= results["latency"]["p99"]["value"]
    assert results["submits"]["rate"]["value"] > 0
    assert results["shell"]["jobs_per_s"]["value"] > 0
    assert results["calls"]["process"]["value"] > 0 and results["calls"]["thread"]["value"] > 0
    paired = results["paired"]
    for mode in ("process", "thread"):
        assert paired[f"latency_p50_{mode}"]["value"] > 0
        assert paired[f"throughput_{mode}"]["value"] > 0
        assert paired[f"worker_cpu_{mode}"]["value"] > 0
    assert paired["process_vs_thread"]["value"] > 0 and "latency_p50_diff" in paired
    assert set(results["queued"]) >= {"cpu_us_per_job_20_queued", "cpu_us_per_job_50_queued",
                                      "gc_full_pause_max_s"}
    assert results["workers"]["dispatch_5"]["value"] > 0
    assert "leader_cpu_5_idle" in results["workers"]
    # Leader CPU per heartbeat the load generator sent (it counts them, on SIGUSR1).
    assert results["workers"]["leader_us_per_heartbeat_5"]["value"] >= 0
    figures = {row["figure"] for row in doc["rows"]}
    assert {"throughput.end_to_end", "latency.p99", "workers.dispatch_2"} <= figures
    assert all(row["command"].startswith("scripts/bench.py --only ") for row in doc["rows"])
    assert "dask" not in doc["skipped"]  # no comparison was asked for


def test_compare_dask_gives_ratios_or_says_why_not() -> None:
    """--compare dask adds Dask's value and the ratio, or a reason when dask is missing."""
    if importlib.util.find_spec("distributed") is None:
        doc = run_bench("--only", "latency", "--compare", "dask")
        assert "not installed" in doc["skipped"]["dask"]
        pytest.skip("dask.distributed is not installed (the bench extra): the comparison "
                    "itself was not run")
    doc = run_bench("--only", "latency", "--compare", "dask")
    rows = {row["figure"]: row for row in doc["rows"]}
    assert rows["latency.p50"]["dask"] > 0
    assert rows["latency.p50"]["ratio"] == pytest.approx(
        rows["latency.p50"]["value"] / rows["latency.p50"]["dask"])


def test_restart_section_reads_the_restart_script(tmp_path: Path) -> None:
    """The restart section calls a bench_restart.py's main(argv) and takes its JSON numbers."""
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import bench_sections
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    script = tmp_path / "bench_restart.py"
    script.write_text(
        "import json, sys\n"
        "def main(argv):\n"
        "    assert argv == ['--jobs', '7', '--json'], argv\n"
        "    print(json.dumps({'restart_s': 1.5, 'rss': {'per_job_bytes': 512}, 'ok': True}))\n"
        "    return 0\n")
    skipped: dict[str, str] = {}
    figures = bench_sections.restart_figures("--jobs 7", skipped, script)
    assert {(f.name, f.value, f.unit) for f in figures} == {
        ("restart_s", 1.5, "s"), ("rss.per_job_bytes", 512.0, "bytes")}
    assert skipped == {}
    assert bench_sections.restart_figures("", skipped, tmp_path / "missing.py") == []
    assert "missing.py" in skipped["restart"]


def test_bench_cpu_names_every_process_of_a_group() -> None:
    """scripts/bench_cpu.py on a group of 3 reports one leader, two followers and both workers."""
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_cpu.py"),
                           "--coordinators", "3", "--jobs", "30", "--repeat", "1", "--json"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT, check=False)
    assert done.returncode == 0, done.stderr[-4000:]
    (row,) = json.loads(done.stdout)["runs"]
    assert row["jobs_per_s"] > 0
    assert {"leader", "w1", "w2", "client"} <= row.keys()
    assert len([name for name in row if name.startswith("follower-")]) == 2
    assert all(row[name] >= 0 for name in row)
