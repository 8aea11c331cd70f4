"""Fail when a module imports, directly or through others, a module that imports it back.

    python scripts/check_cycles.py

Rust: the files of each crate's src/, linked by the crate::/super::/self:: paths they name
(comments and unit tests left out). Python: the modules of spprof, pytest_spprof and
spprof_jupyter, linked by their imports, deferred ones included (annotations under
TYPE_CHECKING are not dependencies). A module using its own package is not a cycle.
"""

from __future__ import annotations

import ast
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def rust_graph(src: str) -> dict:
    files = {}
    for folder, _, names in os.walk(src):
        for name in names:
            if name.endswith(".rs"):
                rel = os.path.relpath(os.path.join(folder, name), src)[:-3]
                mod = rel.replace("/mod", "").replace("/", "::")
                files["" if mod == "lib" else mod] = open(os.path.join(folder, name)).read()

    def resolve(cur: str, path: str):
        parts = path.split("::")
        base = cur.split("::") if cur else []
        if parts[0] == "crate":
            base = []
        elif parts[0] == "super":
            base = base[:-1]
            while len(parts) > 1 and parts[1] == "super":
                base, parts = base[:-1], parts[1:]
        parts = parts[1:]
        for i in range(len(parts), -1, -1):
            cand = "::".join(base + parts[:i])
            if cand in files:
                return cand
        return None

    graph = {}
    for mod, text in files.items():
        text = re.sub(r"#\[cfg\(test\)\]\s*mod tests \{.*", "", text, flags=re.S)
        text = re.sub(r"//[^\n]*", "", text)
        deps = {resolve(mod, m.group(1)) for m in re.finditer(r"\b((?:crate|super|self)(?:::\w+)+)", text)}
        graph[mod] = {d for d in deps if d and d != mod and not mod.startswith(d + "::")}
    return graph


def python_graph(packages) -> dict:
    graph = {}
    for pkg in packages:
        for name in os.listdir(os.path.join(ROOT, pkg)):
            if not name.endswith(".py"):
                continue
            mod = pkg if name == "__init__.py" else f"{pkg}.{name[:-3]}"
            tree = ast.parse(open(os.path.join(ROOT, pkg, name)).read())
            for node in ast.walk(tree):
                if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
                    node.body = []
            deps = set()
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom):
                    target = (pkg + (f".{node.module}" if node.module else "")) if node.level else (node.module or "")
                    deps.add(target)
                    deps.update(f"{target}.{a.name}" for a in node.names)
                elif isinstance(node, ast.Import):
                    deps.update(a.name for a in node.names)
            graph[mod] = deps
    return {m: {d for d in deps if d in graph and d != m and not m.startswith(d + ".")} for m, deps in graph.items()}


def cycles(graph: dict) -> list:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
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


def main() -> int:
    found = []
    for crate in ("rust/engine/src", "rust/python/src"):
        found += [(crate, c) for c in cycles(rust_graph(os.path.join(ROOT, crate)))]
    found += [("python", c) for c in cycles(python_graph(("spprof", "pytest_spprof", "spprof_jupyter")))]
    for where, comp in found:
        print(f"{where}: import cycle between {', '.join(comp)}")
    return 1 if found else 0


if __name__ == "__main__":
    sys.setrecursionlimit(10_000)
    sys.exit(main())
