"""The fixtures: clusters of real daemons on loopback (tests/helpers/nodes.py builds them)."""
import signal

import pytest
from helpers.nodes import Cluster

# The daemons and demos the tests start inherit this process's signal dispositions: a run under
# `nohup` would hand them an ignored SIGHUP, and the tests of what a hangup does would fail.
signal.signal(signal.SIGHUP, signal.SIG_DFL)


@pytest.fixture
def cluster(tmp_path):
    """A fresh three-node cluster: vps (leader), desktop, laptop."""
    c = Cluster(tmp_path)
    c.leader()
    c.desktop = c.worker("desktop", "127.0.0.2")
    c.laptop = c.worker("laptop", "127.0.0.4")
    yield c
    c.stop()


@pytest.fixture(scope="module")
def shared_cluster(tmp_path_factory):
    """A three-node cluster shared by a module's tests that do not break it."""
    c = Cluster(tmp_path_factory.mktemp("cluster"))
    c.leader()
    c.desktop = c.worker("desktop", "127.0.0.2")
    c.laptop = c.worker("laptop", "127.0.0.4")
    yield c
    c.stop()


@pytest.fixture
def empty_cluster(tmp_path):
    """A cluster object with nothing started (tests build what they need)."""
    c = Cluster(tmp_path)
    yield c
    c.stop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failed test's report ends with what its daemons logged last: a flake explains itself."""
    outcome = yield
    report = outcome.get_result()
    if not report.failed or call.when == "collect":
        return
    for name in getattr(item, "fixturenames", ()):
        nodes = getattr(item.funcargs.get(name), "nodes", None)
        if isinstance(nodes, dict):
            for node in nodes.values():
                if hasattr(node, "events"):
                    report.sections.append((f"{name} daemon {node.name} log", node.events()))
