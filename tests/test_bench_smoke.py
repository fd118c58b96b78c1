"""bench/ in a tiny configuration (1 run, 8 MB stream, 3 daemons, a 10-peer swarm): it must not rot.

Numbers are not asserted (benchmarks are not timed tests); that every row is produced is.
"""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROWS = ["sh_c_true", "bash_c_true", "python_c_pass", "import_floor", "ssh_true", "ssh_cm_true",
        "cli_import_s", "cli_exec_true", "ipc_rtt", "curve_rtt", "bare_exec_true", "api_exec_true",
        "fanout_3", "zpeer_ssh_g", "zpeer_ssh_true", "rsync_200mb", "git_clone_50mb", "curve_mb_s",
        "stream_mb_s", "stdin_mb_s", "local_pipe_13mb", "stream_13mb", "api_stream_13mb",
        "ssh_pty_echo_ms", "pty_echo_ms", "daemon_rss", "bash_spawn_13", "fanout_13",
        "heartbeat_floor_13", "leader_idle_cpu_13"]


@pytest.mark.timeout(45)
def test_bench_runs_in_a_tiny_configuration(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "run.py"), "--runs", "1",
                           "--stream-mb", "8", "--swarm", "13", "--idle-s", "0.5", "--no-ssh",
                           "--json", str(out)],
                          stdin=subprocess.DEVNULL, capture_output=True, timeout=40,
                          cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-3000:]
    rows = {r["name"]: r for r in json.loads(out.read_text())["rows"]}
    assert list(rows) == ROWS
    for name in ROWS:
        if name.startswith("ssh") or name in ("rsync_200mb", "git_clone_50mb"):
            assert rows[name]["median"] is None and "skipped" in rows[name]["note"]
        else:
            assert isinstance(rows[name]["median"], (int, float)), rows[name]
            assert rows[name]["median"] > 0 or name in ("heartbeat_floor_13",
                                                        "leader_idle_cpu_13"), rows[name]
    assert rows["cli_exec_true"]["pass"] in (True, False)
    assert set(rows["stream_mb_s"]["peak_rss_mb"]) == {"leader", "worker", "cli"}
    assert set(rows["api_exec_true"]["cpu_ms"]) == {"leader", "worker", "client"}
    assert rows["api_exec_true"]["bare_ms"] == round(rows["bare_exec_true"]["median"], 3)
    assert rows["heartbeat_floor_13"]["spread_pct"] >= 0
    table = proc.stdout.decode()
    for name in ROWS:
        assert name in table


@pytest.mark.timeout(60)
def test_ab_compares_two_trees_in_one_run(tmp_path):
    """bench/ab.py with this checkout on both sides: one line per tree, each with its numbers."""
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "ab.py"), ROOT, "--rounds",
                           "1"],
                          stdin=subprocess.DEVNULL, capture_output=True, timeout=55,
                          cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-3000:]
    lines = proc.stdout.decode().splitlines()
    assert [line.split(" ", 1)[0] for line in lines[:2]] == ["A", "B"], lines
    for line in lines[:2]:
        assert f"{ROOT}: median " in line and "CPU ms per exec: leader " in line, line


@pytest.mark.timeout(45)
def test_timeline_lines_up_the_marks_of_every_process(tmp_path):
    """bench/timeline.py: every segment of the exec path is found and printed, for most execs."""
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "timeline.py"), "--runs",
                           "20"],
                          stdin=subprocess.DEVNULL, capture_output=True, timeout=40,
                          cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-3000:]
    sys.path.insert(0, ROOT)
    from bench.timeline import PATH

    lines = proc.stdout.decode().splitlines()
    assert [line[:58].rstrip() for line in lines[1:len(PATH)]] == [what for _, what in PATH[1:]]
    assert all(float(line[58:].split()[0]) > 0 for line in lines[1:len(PATH) + 1])
    # complete execs out of 20 (a busy machine drops some)
    assert int(lines[-1].split()[0]) >= 10, lines[-1]


@pytest.mark.timeout(60)
def test_ab_idle_measures_both_leaders_over_the_same_window(tmp_path):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "ab.py"), ROOT, "--what",
                           "idle", "--rounds", "1", "--peers", "6"], stdin=subprocess.DEVNULL,
                          capture_output=True, timeout=55, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-3000:]
    lines = proc.stdout.decode().splitlines()
    for tag, line in zip("AB", lines[:2]):
        assert line.startswith(f"{tag} {ROOT}: median ") and line.endswith("% leader CPU"), line


def test_stdin_bench_measures_both_trees_and_the_push_arrives_whole():
    """bench/stdin.py with this checkout as --other too: a row of each kind per tree."""
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "stdin.py"), "--mb", "4",
                           "--runs", "1", "--other", ROOT], stdin=subprocess.DEVNULL,
                          capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-2000:]
    rows = json.loads(proc.stdout)
    assert sorted(rows) == ["other", "this"]
    for tree in rows.values():
        assert all(tree[f"{name}_mb_s"] > 0 for name in ("stdin", "stdout", "push"))
        assert set(tree["peak_rss_mb"]) == {"leader", "worker", "worker_children"}


@pytest.mark.parametrize("script", ["run.py", "ab.py", "profile.py", "timeline.py", "swarm.py",
                                    "stdin.py", "files.py"])
def test_every_bench_script_has_working_help(script):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "bench", script), "--help"],
                          stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
    assert (proc.returncode, proc.stderr) == (0, b"")
    assert proc.stdout.startswith(b"usage: ")


@pytest.mark.timeout(60)
def test_attacks_bench_writes_its_rows(tmp_path):
    """bench/attacks.py with two of its attacks: the table and the JSON of what it measured."""
    out = tmp_path / "attacks.json"
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "attacks.py"), "--only",
                           "pending_cap", "--only", "credit_clamp_mib", "--json", str(out)],
                          stdin=subprocess.DEVNULL, capture_output=True, timeout=55,
                          cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-3000:]
    rows = {r["name"]: r for r in json.loads(out.read_text())["rows"]}
    assert list(rows) == ["pending_cap", "credit_clamp_mib"]
    assert rows["pending_cap"]["value"] == 64 and rows["credit_clamp_mib"]["value"] <= 32
    assert all(r["leader_alive"] for r in rows.values())
    assert [line.split()[0] for line in proc.stdout.decode().splitlines()] == list(rows)
