"""The daemon's heap settings and the trim after a busy spell (zpeer.daemon.memory)."""
import subprocess

from helpers.nodes import d_command, run_python, wait_for

from bench.cluster import rss_kb
from zpeer.daemon import memory


def test_trimmer_trims_once_after_a_busy_spell_has_been_idle_long_enough():
    calls = []
    t = memory.Trimmer(lambda: calls.append(1))
    t.tick(0.0, busy=False)
    t.tick(100.0, busy=False)
    assert calls == []  # never busy: nothing to hand back
    t.tick(100.0, busy=True)
    t.tick(100.5, busy=False)
    t.tick(100.5 + memory.IDLE_TRIM_S - 0.01, busy=False)
    assert calls == []
    t.tick(100.5 + memory.IDLE_TRIM_S, busy=False)
    assert calls == [1]
    t.tick(200.0, busy=False)
    assert calls == [1]  # once
    t.tick(201.0, busy=True)  # busy again: the idle clock starts over
    t.tick(201.5, busy=False)
    t.tick(201.5 + memory.IDLE_TRIM_S / 2, busy=True)
    t.tick(201.5 + memory.IDLE_TRIM_S, busy=False)
    assert calls == [1]


def test_tune_and_trim_in_a_process_of_their_own():
    # a 1 MiB bytes object then comes from the heap (brk), not from an mmap of its own
    code = """if True:
        from zpeer.daemon import memory
        print(memory.tune())
        chunks = [bytes(1 << 20) for _ in range(16)]
        del chunks
        memory.trim()
        print("trimmed")
    """
    out = run_python(code)
    assert (out.returncode, out.stdout, out.stderr) == (0, "True\ntrimmed\n", "")


def test_a_worker_that_streamed_goes_back_to_its_idle_size(cluster):
    worker = cluster.laptop
    cluster.desktop.d("execOnPeer", "--peer", "laptop", "--shellCmd", "true", check=0)
    before = rss_kb(worker.proc.pid)[0]
    out = subprocess.run(d_command()
                         + ["execOnPeer", "--peer", "laptop", "--shellCmd",
                            "head -c 268435456 /dev/zero"],
                         env=cluster.desktop.env, stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=60)
    assert out.returncode == 0, out.stderr
    # the heap keeps up to 8 MiB free while busy (memory.tune); idle for 2 s, it goes back
    wait_for(lambda: rss_kb(worker.proc.pid)[0] <= before + 4096, timeout=8,
             what=f"the worker's RSS back near {before} KiB")
