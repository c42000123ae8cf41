"""The layout holds: no import cycle, no private name imported from another module, contracts
depending on nothing, the pure cores reaching no I/O library, and each package importing only
what its layer allows (LAYERS below; docs/architecture.md draws the same table).

Every import counts, at module level or inside a function: a function-level import runs too,
only later. The checks read the source with ``ast``; nothing is imported.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent

ANY = "*"
"""In LAYERS: any package of the pipeline. Never the benchmarks: the pipeline does not import them."""

LAYERS: dict[str, set[str]] = {
    # package: what it may import besides itself (a package, or one module of it)
    "contracts": set(),  # the shared types, settings, errors, logs, metrics: every package's base
    "kafkaio": {"contracts"},  # the Kafka plumbing every stage shares; it knows no stage
    "ingest": {"contracts", "kafkaio"},  # the source: AMI -> raw topic
    "enrich": {"contracts", "kafkaio", "ingest.framing"},  # the raw topic's frames are ingest's format
    "store": {"contracts", "kafkaio"},  # the sinks: records topic -> ClickHouse, and object storage
    "retention": {"contracts", "store"},  # policies and jobs over what the store holds
    "reconcile": {"contracts", "store", "kafkaio", "ingest.framing", "ingest.capture"},  # Asterisk's records vs the store; raw frames read as ingest writes them
    "simulator": {"contracts"},  # a fake Asterisk: it knows the pipeline by its contracts only
    "api": {"contracts", "store", "retention"},  # the panel's HTTP service over what the store holds
    "pbxpipe": {ANY},  # the composition root: the CLI wires everything
    "bench": {ANY},  # benchmarks measure everything; nothing else imports them
}
BENCHMARKS = "bench"

PURE_CORES = (
    "enrich.calls", "enrich.events", "enrich.partition", "enrich.tariffs", "enrich.spend",
    "enrich.rating", "store.queries", "store.schema", "retention.recordings",
    "retention.policies", "ingest.framing", "ingest.routing", "store.tenancy", "api.access",
    "api.params", "api.panel.charts", "api.panel.present", "reconcile.asterisk", "reconcile.compare",
    "reconcile.queries",
)
"""Domain logic: typed values in, typed values out. Reading a local file (a price list, the
migrations) is allowed; talking to a network, a server or an event loop is not."""

IO_LIBRARIES = ("aiokafka", "clickhouse_connect", "chdb", "minio", "panoramisk", "httpx", "socket",
                "asyncio", "urllib.request", "requests", "boto3")


# -- the import graph ---------------------------------------------------------------------------


@dataclass
class Graph:
    """Project modules and what each imports: project modules (``edges``), other modules by
    full dotted name (``external``), and private names taken from a project module."""

    modules: set[str]
    edges: dict[str, set[str]] = field(default_factory=dict)
    external: dict[str, set[str]] = field(default_factory=dict)
    private: list[str] = field(default_factory=list)  # "module:line imports name from module"


def package_of(module: str) -> str:
    return module.split(".", 1)[0]


def project_sources(root: Path = ROOT) -> dict[str, str]:
    """module name -> source of every module of the project's packages (directories at the root
    with an ``__init__.py``) and of the tests."""
    out: dict[str, str] = {}
    packages = [d for d in root.iterdir() if (d / "__init__.py").is_file()]
    for path in [p for d in packages for p in d.rglob("*.py")] + sorted((root / "tests").glob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path.read_text(encoding="utf-8")
    return out


def build_graph(sources: Mapping[str, str], packages: Iterable[str]) -> Graph:
    """The import graph of ``sources`` (module name -> source); ``packages``: the project's
    top-level packages (modules outside them, such as the tests', are read for private names
    only)."""
    packages = set(packages)
    graph = Graph(modules={m for m in sources if package_of(m) in packages})

    def project(name: str) -> bool:
        return package_of(name) in packages

    for module, source in sources.items():
        edges = graph.edges.setdefault(module, set())
        external = graph.external.setdefault(module, set())
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    (edges if project(alias.name) else external).add(alias.name)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                base = node.module
                for alias in node.names:
                    full = f"{base}.{alias.name}"
                    if project(base):
                        edges.add(full if full in graph.modules else base)
                        if alias.name.startswith("_") and not alias.name.startswith("__"):
                            graph.private.append(
                                f"{module}:{node.lineno} imports {alias.name} from {base}")
                    else:
                        external.update((base, full))
        edges.discard(module)
    for module in set(graph.edges) - graph.modules:  # the tests: private names only
        del graph.edges[module], graph.external[module]
    return graph


# -- the checks ---------------------------------------------------------------------------------


def cycles(graph: Graph) -> list[list[str]]:
    """One cycle (``a -> b -> a``) through each strongly connected group of modules (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.edges.get(v, ())):
            if w not in graph.modules:
                continue
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.add(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(_cycle_in(graph, group))

    for v in sorted(graph.modules):
        if v not in index:
            connect(v)
    return found


def _cycle_in(graph: Graph, group: set[str]) -> list[str]:
    """A path from the group's first module back to itself, within the group (breadth first)."""
    start = min(group)
    paths = {start: [start]}
    todo = [start]
    while todo:
        v = todo.pop(0)
        for w in sorted(graph.edges.get(v, set()) & group):
            if w == start:
                return [*paths[v], start]
            if w not in paths:
                paths[w] = [*paths[v], w]
                todo.append(w)
    raise AssertionError(f"no cycle through {start} in {sorted(group)}")


def io_reached(graph: Graph, module: str) -> list[str]:
    """Each I/O library ``module`` imports, itself or through the project modules it imports,
    with the chain of modules that leads there."""
    paths = {module: [module]}
    todo = [module]
    out = []
    while todo:
        v = todo.pop(0)
        for name in sorted(graph.external.get(v, ())):
            if any(name == lib or name.startswith(lib + ".") for lib in IO_LIBRARIES):
                out.append(" -> ".join(paths[v]) + f" imports {name}")
        for w in sorted(graph.edges.get(v, ())):
            if w in graph.modules and w not in paths:
                paths[w] = [*paths[v], w]
                todo.append(w)
    return out


def allowed(layers: Mapping[str, set[str]], source: str, target: str) -> bool:
    """May module ``source`` import project module ``target``?"""
    mine, theirs = package_of(source), package_of(target)
    if mine == theirs:
        return True
    allow = layers.get(mine, set())
    if ANY in allow and theirs != BENCHMARKS:
        return True
    return any(target == a or target.startswith(a + ".") for a in allow)


def layer_violations(graph: Graph, layers: Mapping[str, set[str]]) -> list[str]:
    out = [f"{package}: no line in LAYERS (add one: what it may import, and why)"
           for package in sorted({package_of(m) for m in graph.modules} - set(layers))]
    for module in sorted(graph.modules):
        for target in sorted(graph.edges.get(module, ())):
            if not allowed(layers, module, target):
                out.append(f"{module} imports {target}: {package_of(module)} may import "
                           f"{sorted(layers.get(package_of(module), set())) or 'nothing else'}")
    return out


# -- the project --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def project() -> Graph:
    sources = project_sources()
    packages = {package_of(m) for m in sources} - {"tests"}
    return build_graph(sources, packages)


def test_no_import_cycle_between_project_modules(project: Graph) -> None:
    """No project module imports, directly or through others, a module that imports it."""
    assert [" -> ".join(c) for c in cycles(project)] == []


def test_no_module_imports_another_modules_private_name(project: Graph) -> None:
    """``from X import _name`` never crosses modules: a shared name is public where it lives."""
    assert project.private == []


def test_contracts_import_nothing_else_of_the_project(project: Graph) -> None:
    """contracts/ is every package's base: it imports only itself."""
    assert LAYERS["contracts"] == set()
    assert {(m, t) for m in project.modules if package_of(m) == "contracts"
            for t in project.edges[m] if package_of(t) != "contracts"} == set()


@pytest.mark.parametrize("module", PURE_CORES)
def test_a_pure_core_reaches_no_io_library(project: Graph, module: str) -> None:
    """The domain logic imports no network, server or event-loop library, itself or through any
    project module it imports."""
    assert module in project.modules
    assert io_reached(project, module) == []


def test_each_package_imports_only_what_its_layer_allows(project: Graph) -> None:
    """Every package has a line in LAYERS, and imports nothing of the project beyond it."""
    assert layer_violations(project, LAYERS) == []


def test_the_architecture_doc_draws_the_same_layers() -> None:
    """docs/architecture.md's table of what each package may import is LAYERS, row for row."""
    doc = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    table = doc.split("<!-- layers:begin -->")[1].split("<!-- layers:end -->")[0]
    drawn = {}
    for row in re.findall(r"^\| `(\w+)` \| ([^|]*) \|", table, re.M):
        package, cell = row
        drawn[package] = ({ANY} if cell.strip() == "any package" else
                          set(re.findall(r"`([\w.]+)`", cell)))
    assert drawn == LAYERS


# -- the checks catch what they are for ---------------------------------------------------------


def graph_of(sources: dict[str, str]) -> Graph:
    return build_graph(sources, {package_of(m) for m in sources})


def test_a_cycle_is_found_and_reported_whole() -> None:
    """Three modules in a ring (one import inside a function) are one cycle, reported in order;
    a chain is none."""
    ring = graph_of({"a.x": "import a.y", "a.y": "from a.z import f",
                     "a.z": "def g():\n    from a import x\n", "a": "", "a.w": "import a.x"})
    assert cycles(ring) == [["a.x", "a.y", "a.z", "a.x"]]
    assert cycles(graph_of({"a.x": "import a.y", "a.y": "import a.z", "a.z": ""})) == []


def test_a_private_name_imported_is_found() -> None:
    """``from X import _name`` is found wherever it is, a function included; dunders and
    public names pass."""
    g = graph_of({"a.x": "_hidden = 1\n", "a.y": "def f():\n    from a.x import _hidden\n",
                  "a.z": "from a.x import __doc__, shown\n"})
    assert g.private == ["a.y:2 imports _hidden from a.x"]


def test_an_io_library_is_found_through_the_modules_between() -> None:
    """A core importing a module that imports a module that imports an I/O library reaches it,
    and the chain says how; ``from urllib import request`` counts, urllib.parse does not."""
    g = graph_of({"core.logic": "from core import util", "core.util": "import adapters.kafka",
                  "adapters.kafka": "def f():\n    import aiokafka\n",
                  "core.fine": "from urllib import parse\nimport msgspec",
                  "core.web": "from urllib import request"})
    assert io_reached(g, "core.logic") == ["core.logic -> core.util -> adapters.kafka imports aiokafka"]
    assert io_reached(g, "core.fine") == []
    assert io_reached(g, "core.web") == ["core.web imports urllib.request"]


def test_a_layer_broken_is_found() -> None:
    """An import outside a package's line is reported, one module allowed is not its whole
    package, ANY never reaches the benchmarks, and a package without a line is reported."""
    layers = {"base": set(), "mid": {"base", "low.format"}, "low": {"base"}, "top": {ANY},
              "bench": {ANY}}
    g = graph_of({"base.types": "", "low.format": "import base.types", "low.io": "",
                  "mid.ok": "import low.format\nimport base.types",
                  "mid.bad": "from low import io", "base.bad": "import mid.ok",
                  "top.cli": "import mid.ok\nimport bench.run", "bench.run": "import top.cli",
                  "new.thing": "import base.types"})
    assert layer_violations(g, layers) == [
        "new: no line in LAYERS (add one: what it may import, and why)",
        "base.bad imports mid.ok: base may import nothing else",
        "mid.bad imports low.io: mid may import ['base', 'low.format']",
        "new.thing imports base.types: new may import nothing else",
        "top.cli imports bench.run: top may import ['*']",
    ]
