"""A worker's audit copies wait for the leader's acknowledgment, exec before end."""
from zpeer.daemon import audit_copies
from zpeer.daemon.audit_copies import AuditCopies
from zpeer.wire import messages


def exec_copy(job):
    return messages.exec_open(job, "w1", {"cmd": "true"}, 1 << 20, 1.0)


def test_the_end_goes_only_once_the_exec_was_taken_and_each_again_until_acknowledged():
    copies = AuditCopies()
    copies.add(exec_copy("j1"))
    copies.add(messages.exit_status("j1", "w1", 3, "exit", 0, 0.1, 0))
    (due,) = copies.due(now=10.0)
    assert due[:2] == ("j1", 0)  # the exec first, the exit waits for it
    copies.sent("r1", "j1", 0, now=10.0)
    assert copies.due(now=10.5) == []  # in flight
    assert [d[:2] for d in copies.due(now=10.0 + audit_copies.RETRY_S)] == [("j1", 0)]  # again
    copies.sent("r2", "j1", 0, now=12.0)
    copies.acknowledged("r1")  # a late ack of the first send counts as well
    ((job, part, header),) = copies.due(now=12.0)
    assert (job, part, header["t"], header["rc"]) == ("j1", 1, "exit", 3)
    copies.sent("r3", "j1", 1, now=12.0)
    copies.acknowledged("r3")
    assert copies.jobs == {} and copies.due(now=99.0) == []


def test_an_end_without_its_exec_is_no_row_and_the_oldest_go_when_too_many_wait(monkeypatch):
    copies = AuditCopies()
    copies.add(messages.error("ghost", "w1", {"err": "x", "msg": "y"}))
    assert copies.jobs == {}
    monkeypatch.setattr(audit_copies, "COPIES_MAX", 3)
    for i in range(5):
        copies.add(exec_copy(f"j{i}"))
    assert list(copies.jobs) == ["j2", "j3", "j4"]
