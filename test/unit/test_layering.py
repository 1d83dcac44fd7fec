"""The layering of the `aviator` packages, and a check that every import respects it.

`LAYERS` below is the table (lowest first); docs cite it from here. A module may import
from its own package and from packages in LOWER layers, never from a higher layer nor
from another package of its own layer, and never along an edge in `FORBIDDEN`:

| layer | packages | what they are |
|---|---|---|
| 0 | api, selection, workqueue, pki | self-contained: no other aviator package |
| 1 | kube, testing | REST client, resources, Pod/Service facts, IP addresses, our marks; the real control plane for tests (its certificates from pki) |
| 2 | latency, informers, leaderelection | built on the client |
| 3 | runtime, sharding | the generic controller loop, Event recorder, writes; which replica owns which policy (member Leases, the ring, the ownership marker) |
| 4 | agent, reconcilers | the two sides: the agent never imports the controller's code, nor the reconcilers the agent's |
| 5 | controller, plugin | the controller process (wires informers, elector, reconciler); the kubectl plugin (reads what the reconciler writes) |
| 6 | box | the cluster in a box, which runs everything |
| 7 | cli | the command line (it loads subcommands by module name) |
| 8 | __main__ | `python -m aviator` |

Imports are read with `ast` from the source (including function-level and
TYPE_CHECKING imports), so the check needs no import side effects.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "aviator"

LAYERS: tuple[tuple[str, ...], ...] = (
    ("api", "selection", "workqueue", "pki"),
    ("kube", "testing"),
    ("latency", "informers", "leaderelection"),
    ("runtime", "sharding"),
    ("agent", "reconcilers"),
    ("controller", "plugin"),
    ("box",),
    ("cli",),
    ("__main__",),
)

# Edges the layers alone would allow but that must not exist.
FORBIDDEN: frozenset[tuple[str, str]] = frozenset(
    {
        ("controller", "agent"),  # the controller process never loads the agent
    }
)

# (importing module, imported module) pairs that break the layering today and are to
# be removed; the test fails when one is listed but no longer needed, so this only
# shrinks.
KNOWN_EXCEPTIONS: frozenset[tuple[str, str]] = frozenset({})

LAYER_OF = {pkg: i for i, layer in enumerate(LAYERS) for pkg in layer}


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def top_package(module: str) -> str | None:
    """`aviator.kube.pods` → "kube"; None for the root package itself."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def imported_modules(tree: ast.AST, module: str, is_package: bool, root: Path) -> set[str]:
    """Absolute names of the aviator modules (or packages) a module imports."""
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")
                anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
                base = ".".join([*anchor, base] if base else anchor)
            if base == PACKAGE:  # `from aviator import kube` names a subpackage
                for alias in node.names:
                    sub = root / PACKAGE / alias.name
                    is_module = sub.is_dir() or sub.with_suffix(".py").exists()
                    out.add(f"{PACKAGE}.{alias.name}" if is_module else PACKAGE)
            else:
                out.add(base)
    return {m for m in out if m == PACKAGE or m.startswith(PACKAGE + ".")}


def import_edges(root: Path) -> list[tuple[str, str]]:
    """Every (importing module, imported aviator module) under root/aviator."""
    edges: list[tuple[str, str]] = []
    for path in sorted((root / PACKAGE).rglob("*.py")):
        module = module_name(path, root)
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for target in sorted(imported_modules(tree, module, path.name == "__init__.py", root)):
            edges.append((module, target))
    return edges


def allowed(source_pkg: str, target_pkg: str) -> bool:
    if source_pkg == target_pkg:
        return True
    if (source_pkg, target_pkg) in FORBIDDEN:
        return False
    return LAYER_OF[target_pkg] < LAYER_OF[source_pkg]


def violations(root: Path) -> list[str]:
    """Human-readable layering violations under root/aviator (KNOWN_EXCEPTIONS aside)."""
    out: list[str] = []
    for source, target in import_edges(root):
        src, dst = top_package(source), top_package(target)
        if src is None or dst is None or (source, target) in KNOWN_EXCEPTIONS:
            continue
        if src not in LAYER_OF or dst not in LAYER_OF:
            out.append(f"{source} -> {target}: package not in LAYERS")
        elif not allowed(src, dst):
            out.append(
                f"{source} -> {target}: {src} (layer {LAYER_OF[src]}) may not import "
                f"{dst} (layer {LAYER_OF[dst]})"
            )
    return out


def test_every_package_has_a_layer() -> None:
    packages = {
        p.name if p.is_dir() else p.stem
        for p in (ROOT / PACKAGE).iterdir()
        if (p.is_dir() and (p / "__init__.py").exists())
        or (p.suffix == ".py" and p.stem != "__init__")
    }
    assert packages - set(LAYER_OF) == set(), "place new packages in LAYERS"
    assert set(LAYER_OF) - packages == set(), "LAYERS names a package that is gone"


def test_imports_follow_the_layers() -> None:
    assert violations(ROOT) == []


def test_known_exceptions_are_still_needed() -> None:
    edges = set(import_edges(ROOT))
    assert KNOWN_EXCEPTIONS - edges == set(), "remove fixed entries from KNOWN_EXCEPTIONS"


def _write(root: Path, rel: str, text: str = "") -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def test_a_violation_is_caught(tmp_path: Path) -> None:
    for pkg in ("kube", "agent", "reconcilers", "controller"):
        _write(tmp_path, f"aviator/{pkg}/__init__.py")
    _write(tmp_path, "aviator/__init__.py", "__version__ = '0'\n")
    _write(tmp_path, "aviator/kube/pods.py", "from aviator.reconcilers import podindex\n")
    _write(tmp_path, "aviator/agent/targets.py", "from . import x\nfrom ..reconcilers import y\n")
    _write(tmp_path, "aviator/controller/app.py", "def f():\n    import aviator.agent.app\n")
    _write(
        tmp_path,
        "aviator/reconcilers/ok.py",
        "from aviator import __version__, kube\nimport aviator\n",
    )
    assert violations(tmp_path) == [
        "aviator.agent.targets -> aviator.reconcilers: agent (layer 4) may not import "
        "reconcilers (layer 4)",
        "aviator.controller.app -> aviator.agent.app: controller (layer 5) may not import "
        "agent (layer 4)",
        "aviator.kube.pods -> aviator.reconcilers: kube (layer 1) may not import "
        "reconcilers (layer 4)",
    ]
