"""The layers of zpeer/ hold as its package docstrings say: imports run down only (the shared
vocabulary, then zpeer.wire, then zpeer.daemon and zpeer.cli), no module imports another in a
circle, and none takes a private name from another module."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "zpeer"
LAYERS = {"vocabulary": 0, "wire": 1, "daemon": 2, "cli": 3, "entry": 4}


def modules():
    """{dotted name: parsed tree} of every module of the package."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = ast.parse(path.read_text(), str(path))
    return found


def layer(name):
    """The layer a module belongs to."""
    parts = name.split(".")
    if name == "zpeer.__main__":
        return "entry"
    return parts[1] if len(parts) > 2 and parts[1] in LAYERS else "vocabulary"


def imports(tree, top_level_only=False):
    """(imported zpeer module, names taken, at module level?) for every import in a tree."""
    found = []
    body = set(map(id, tree.body))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("zpeer"):
                    found.append((alias.name, [], id(node) in body))
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("zpeer"):
            found.append((node.module, [a.name for a in node.names], id(node) in body))
    return [f for f in found if f[2] or not top_level_only]


def resolve(imported, names, known):
    """The modules an import names: `from zpeer.wire import keys` is zpeer.wire.keys."""
    targets = [f"{imported}.{n}" for n in names if f"{imported}.{n}" in known]
    return targets or [imported]


def test_imports_run_down_the_layers():
    known = modules()
    upward = [f"{name} imports {target}" for name, tree in known.items()
              for imported, names, _ in imports(tree) for target in resolve(imported, names, known)
              if LAYERS[layer(target)] > LAYERS[layer(name)]]
    assert upward == []


def test_the_cli_loads_daemon_code_only_inside_the_commands_that_become_or_read_a_daemon():
    """`d daemon` becomes the daemon and `d dbSanityCheck` reads its files when none runs; every
    other command (`d execOnPeer` first) starts without daemon code."""
    known = modules()
    at_import = [f"{name} imports {target}" for name, tree in known.items() if layer(name) == "cli"
                 for imported, names, at_top in imports(tree) if at_top
                 for target in resolve(imported, names, known) if layer(target) == "daemon"]
    assert at_import == []


def test_no_module_imports_another_in_a_circle():
    known = modules()
    graph = {name: {t for imported, names, _ in imports(tree)
                    for t in resolve(imported, names, known) if t != name}
             for name, tree in known.items()}
    state, path, circles = {}, [], []

    def visit(node):
        state[node] = "open"
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                circles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state and nxt in graph:
                visit(nxt)
        path.pop()
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name)
    assert circles == []


def test_no_private_name_is_taken_from_another_module():
    taken = [f"{name}: from {imported} import {n}" for name, tree in modules().items()
             for imported, names, _ in imports(tree) for n in names
             if n.startswith("_") and not n.startswith("__")]
    assert taken == []


def test_each_package_says_what_lives_there_and_holds_no_code():
    for init in sorted(PACKAGE.rglob("__init__.py")):
        tree = ast.parse(init.read_text())
        doc = ast.get_docstring(tree)
        assert doc and "import" in doc, f"{init}: the docstring says what it may import"
        code = [n for n in tree.body[1:]
                if not (isinstance(n, ast.Assign) and n.targets[0].id == "__version__")]
        assert code == [], f"{init} holds code: a package's face is its docstring"
