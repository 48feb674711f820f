#!/usr/bin/env python3
"""Checks the workspace's module structure, as the README's Layout promises it:

- no import cycle between the modules of any crate (a module is a file; `crate::`, `super::`
  and `self::` paths are followed to the file that defines them);
- in the shared crate, the parts depend one way only: `cli` may use `server`, `access` and the
  database, `server` may use `access` and the
  database, `access` may use the database, and neither `access` nor the database uses a part
  above it (the database is its own crate, which Cargo already keeps from naming the others).

Prints each offending edge or cycle and exits 1, else prints a one-line summary.
A regex-level reader, not a Rust parser: it sees `use` paths and qualified paths in code, which
is what an import between our modules looks like; comments and strings are stripped first.
"""
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
CRATES = ["shared/database", "shared", "auth-service", "task-service", "tools/localpg", "tools/testkit",
          "tools/devstack", "tools/faults", "bench", "proto"]
# The shared crate's layers, highest first: a module may use its own layer and those below.
LAYERS = {"shared": ["cli", "server", "access"]}

PATH = re.compile(r"\b(crate|super|self)((?:::[A-Za-z_][A-Za-z0-9_]*)+)")
GROUP = re.compile(r"\b(crate|super|self)((?:::[A-Za-z_][A-Za-z0-9_]*)*)::\{([^{}]*)\}")


def strip(source):
    source = re.sub(r"/\*.*?\*/", "", source, flags=re.S)
    source = re.sub(r'"(?:\\.|[^"\\])*"', '""', source)
    return re.sub(r"//[^\n]*", "", source)


def module_of(src, path):
    """The module path of a file, e.g. ('server', 'metrics') for src/server/metrics.rs."""
    parts = list(path.relative_to(src).with_suffix("").parts)
    if parts[-1] in ("lib", "main", "mod"):
        parts = parts[:-1]
    return tuple(parts)


def resolve(modules, here, anchor, segments):
    """The longest known module the path names, or None (an item of an outside crate)."""
    if anchor == "crate":
        base = ()
    elif anchor == "self":
        base = here
    else:
        base = here[:-1]
        while segments and segments[0] == "super":
            base, segments = base[:-1], segments[1:]
    best = base if base in modules else None
    for n in range(1, len(segments) + 1):
        candidate = base + tuple(segments[:n])
        if candidate in modules:
            best = candidate
    return best


def edges_of(crate):
    src = ROOT / crate / "src"
    files = {module_of(src, p): p for p in src.rglob("*.rs")}
    edges = {}
    for here, path in files.items():
        code = strip(path.read_text())
        # `#[cfg(test)] mod tests { ... }` may use anything of its parent: not an import.
        code = re.split(r"#\[cfg\(test\)\]\s*mod tests", code)[0]
        targets = set()
        references = [(m.group(1), m.group(2)) for m in PATH.finditer(code)]
        for m in GROUP.finditer(code):
            for item in m.group(3).split(","):
                item = item.strip().split(" as ")[0].strip()
                if item and item != "self":
                    references.append((m.group(1), m.group(2) + "::" + item.replace(" ", "")))
        for anchor, rest in references:
            target = resolve(files, here, anchor, [s for s in rest.split("::") if s])
            if target is not None and target != here and not here[:len(target)] == target:
                targets.add(target)
        edges[here] = targets
    return edges


def cycles(edges):
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in list(edges):
        if v not in index:
            visit(v)
    return found


def name(module):
    return "::".join(module) or "(crate root)"


def main():
    problems, counted = [], 0
    for crate in CRATES:
        if not (ROOT / crate / "src").is_dir():
            continue
        edges = edges_of(crate)
        counted += sum(len(t) for t in edges.values())
        for component in cycles(edges):
            problems.append(f"{crate}: import cycle between " + ", ".join(name(m) for m in component))
        layers = LAYERS.get(crate, [])
        for here, targets in edges.items():
            if not here or here[0] not in layers:
                continue
            for target in targets:
                if target and target[0] in layers and layers.index(target[0]) < layers.index(here[0]):
                    problems.append(f"{crate}: {name(here)} (layer {here[0]}) uses {name(target)}, a layer above it")
    for problem in problems:
        print(problem)
    if problems:
        return 1
    print(f"module graph: {counted} imports between modules in {len(CRATES)} crates, no cycle, layers one way")
    return 0


if __name__ == "__main__":
    sys.exit(main())
