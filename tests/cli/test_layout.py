"""The package's layout keeps its promises: no import cycles, the lab apart from the product,
small modules, and no module importing the package root from inside.

Read from the source with `ast` (nothing is imported): every `import` statement counts,
wherever it stands (module level, inside a function, under TYPE_CHECKING), because an
import deferred into a function is still a dependency that a cycle runs through.
"""

from __future__ import annotations

import ast
from pathlib import Path

from support import ROOT

PACKAGE = ROOT / "tpmtls"
MAX_LINES = 500

#: Product modules that may import the lab: the quickstart runs on it openly, and the public
#: `tpmtls.testing` is the lab's small face (the software-TPM stack) by design.
LAB_USERS = {"tpmtls.quickstart", "tpmtls.testing"}

#: Known offenders that other changes of the same refactoring fix: each entry is removed by the
#: change that fixes it (the last test below insists); nothing new may be added here.
ALLOWED_CYCLES: set[frozenset[str]] = set()
ALLOWED_LONG: set[str] = set()
ALLOWED_ROOT_IMPORTS: set[str] = set()
ALLOWED_LAB_USERS: set[str] = set()


def _modules() -> dict[str, Path]:
    """Dotted name → file, for every Python module of the package."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _resolve(module: str, is_package: bool, node: ast.ImportFrom | ast.Import) -> set[str]:
    """The package modules an import statement in `module` loads by name."""
    targets: list[str] = []
    if isinstance(node, ast.Import):
        targets = [alias.name for alias in node.names]
    else:
        if node.level:
            base = module.split(".") if is_package else module.split(".")[:-1]
            base = base[: len(base) - (node.level - 1)]
            prefix = ".".join(base + ([node.module] if node.module else []))
        else:
            prefix = node.module or ""
        # `from pkg import name`: the submodule pkg.name if there is one, else pkg itself
        targets = [f"{prefix}.{alias.name}" if f"{prefix}.{alias.name}" in MODULES else prefix for alias in node.names]
    found = set()
    for target in targets:
        while target and target not in MODULES:  # `import tpmtls.tls.x` names a module; attributes do not
            target = target.rpartition(".")[0]
        if target:
            found.add(target)
    return found


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text(), str(path))
        is_package = path.name == "__init__.py"
        edges: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                edges |= _resolve(name, is_package, node)
        edges.discard(name)
        graph[name] = edges
    return graph


GRAPH = _graph()


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_walker_sees_the_package():
    """A sanity check of the test itself: known edges are found, deferred imports included."""
    assert "tpmtls.registry.client" in MODULES and "tpmtls.lab" in MODULES
    assert "tpmtls.errors" in GRAPH["tpmtls.registry.client"]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles():
    cycles = [c for c in _cycles(GRAPH) if frozenset(c) not in ALLOWED_CYCLES]
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_the_lab_stays_out_of_the_product():
    users = sorted(name for name, edges in GRAPH.items()
                   if not (name == "tpmtls.lab" or name.startswith("tpmtls.lab."))
                   and any(e == "tpmtls.lab" or e.startswith("tpmtls.lab.") for e in edges))
    assert set(users) - LAB_USERS - ALLOWED_LAB_USERS == set(), users


def test_no_module_imports_the_package_root():
    """`import tpmtls` from inside would run the whole public surface (and its OPENSSL_CONF
    set-up) as a side effect of importing one part, and hides which part is used."""
    offenders = sorted(name for name, edges in GRAPH.items() if "tpmtls" in edges and name != "tpmtls")
    assert set(offenders) - ALLOWED_ROOT_IMPORTS == set(), offenders


def test_product_modules_are_small():
    long = {name: n for name, path in MODULES.items()
            if not name.startswith("tpmtls.lab") and (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert set(long) - ALLOWED_LONG == set(), long


def test_the_allow_lists_hold_only_live_offenders():
    """An offender fixed elsewhere leaves its allow-list entry: remove it, so it cannot come back."""
    cycles = {frozenset(c) for c in _cycles(GRAPH)}
    assert ALLOWED_CYCLES <= cycles, ALLOWED_CYCLES - cycles
    long = {name for name, path in MODULES.items() if len(path.read_text().splitlines()) > MAX_LINES}
    assert ALLOWED_LONG <= long, ALLOWED_LONG - long
    root_users = {name for name, edges in GRAPH.items() if "tpmtls" in edges}
    assert ALLOWED_ROOT_IMPORTS <= root_users, ALLOWED_ROOT_IMPORTS - root_users
