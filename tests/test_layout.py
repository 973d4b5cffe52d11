"""The package layout shows the design: layers that import downwards only, no import cycles,
Ray only in facepriv/distributed, small modules. Checked on the source with `ast`."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "facepriv"
MAX_LINES = 420


def _modules() -> dict[str, Path]:
    out = {}
    for f in PKG.rglob("*.py"):
        parts = list(f.relative_to(PKG.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = f
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Every facepriv module `name` imports, at module level or inside functions."""
    is_pkg = path.name == "__init__.py"
    package = name if is_pkg else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(up + ([node.module] if node.module else []))
            for a in node.names:
                found.add(f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base)
    return {m for m in found if m in modules and m != name}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_the_import_graph_has_no_cycles():
    graph = _graph()
    assert len(graph) > 60 and graph["facepriv.pipeline.cloaker"]  # the graph was really read
    assert _cycles(graph) == []


def test_only_the_distributed_package_imports_ray():
    users = sorted(str(f.relative_to(PKG.parent)) for f in PKG.rglob("*.py")
                   if any((isinstance(n, ast.Import) and any(a.name.split(".")[0] == "ray" for a in n.names))
                          or (isinstance(n, ast.ImportFrom) and (n.module or "").split(".")[0] == "ray")
                          for n in ast.walk(ast.parse(f.read_text()))))
    assert users and all(u.startswith("facepriv/distributed/") for u in users), users


def test_layers_import_downwards():
    """core is pure (torch/numpy): it imports no other facepriv package; attacks only core;
    nothing below the distributed layer imports it, and only the CLI imports the CLI."""
    below = {
        "facepriv.core": {"facepriv.core", "facepriv.errors"},
        "facepriv.attacks": {"facepriv.core", "facepriv.attacks", "facepriv.errors"},
    }
    for mod, deps in _graph().items():
        for layer, allowed in below.items():
            if mod == layer or mod.startswith(layer + "."):
                bad = [d for d in deps if not any(d == a or d.startswith(a + ".") for a in allowed)]
                assert not bad, f"{mod} imports {bad}"
        if not mod.startswith(("facepriv.distributed", "facepriv.cli")):
            assert not [d for d in deps if d.startswith("facepriv.distributed")], mod
        if not mod.startswith("facepriv.cli"):
            assert not [d for d in deps if d.startswith("facepriv.cli")], mod


def test_no_flat_modules_and_no_large_ones():
    flat = sorted(f.name for f in PKG.glob("*.py"))
    assert flat == ["__init__.py", "errors.py"], flat
    sizes = {str(f.relative_to(PKG.parent)): len(f.read_text().splitlines()) for f in PKG.rglob("*.py")}
    assert {f: n for f, n in sizes.items() if n > MAX_LINES} == {}


def test_the_cli_parser_imports_no_heavy_library():
    """`facepriv --help` builds every command's parser without torch, ray or pyarrow (lazy
    imports), so it answers at once."""
    import subprocess
    import sys

    code = ("import sys, facepriv.cli as c; c.build_parser(); "
            "print(sorted(m for m in ('torch', 'ray', 'pyarrow', 'facenet_pytorch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
