#!/usr/bin/env python3
"""Fails when files of src/ import each other in a circle.

Builds the graph of files of the library crate (src/lib.rs and the modules under it): an edge
A -> B when A names an item of B through a `use` declaration or a path in its code
(`crate::…`, `super::…`, `self::…`, or a child module's name). A name re-exported by a
`pub use` in a module file leads to the file that defines it, not to the re-exporting file.
`mod x;` declarations are not edges: a parent declaring a child does not use it. Comments and
string literals are ignored; inline modules (`mod tests { … }`) belong to their file.

Prints every circle found (one strongly connected set of files, and one circle through it)
and exits 1; prints the number of files and edges checked and exits 0 when there is none.

Usage: .ci/import-cycles.py [SRC_DIR]   (default: src/ next to this script's directory)
"""

import re
import sys
from pathlib import Path

IDENT = r"[A-Za-z_][A-Za-z0-9_]*"


def strip_comments_and_strings(text):
    """The code of `text` with comments, string and char literals blanked (lines kept)."""
    out = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif text.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if text.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif text.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    if text[i] == "\n":
                        out.append("\n")
                    i += 1
        elif (m := re.match(r'b?r(#*)"', text[i:])) and (i == 0 or not re.match(r"\w", text[i - 1])):
            end = '"' + m.group(1)
            j = text.find(end, i + m.end())
            j = n if j < 0 else j + len(end)
            out.append('""' + "\n" * text.count("\n", i, j))
            i = j
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append('""' + "\n" * text.count("\n", i, j))
            i = j + 1
        elif c == "'" and (m := re.match(r"'(\\.[^']*|[^\\'])'", text[i:])):
            out.append("' '")
            i += m.end()
        else:
            out.append(c)
            i += 1
    return "".join(out)


def expand_use_tree(tree):
    """`a::{b, c::{self, d as e}}` -> [(["a","b"], "b"), (["a","c"], "c"), (["a","c","d"], "e")]."""
    tree = re.sub(r"\s*(::|[{},])\s*", r"\1", re.sub(r"\s+", " ", tree.strip()))
    results = []

    def walk(prefix, text):
        depth, parts, start = 0, [], 0
        for k, ch in enumerate(text):
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
            elif ch == "," and depth == 0:
                parts.append(text[start:k])
                start = k + 1
        parts.append(text[start:])
        for part in filter(None, parts):
            brace = part.find("{")
            if brace >= 0:
                head = [s for s in part[:brace].split("::") if s]
                walk(prefix + head, part[brace + 1 : part.rindex("}")])
                continue
            part, _, alias = part.partition(" as ")
            segments = prefix + [s for s in part.split("::") if s]
            if segments and segments[-1] == "self":
                segments = segments[:-1]
            if segments:
                results.append((segments, alias.strip() or segments[-1]))

    walk([], tree)
    return results


class Crate:
    def __init__(self, src):
        self.src = src
        self.files = {}  # module path tuple -> file
        self.children = {}  # module path -> names of child modules
        self.reexports = {}  # file -> {name: (module path, segments)}
        self.uses = {}  # file -> [(module path, segments)]
        self.load(src / "lib.rs", ())

    def load(self, path, module):
        self.files[module] = path
        code = strip_comments_and_strings(path.read_text())
        self.children.setdefault(module, set())
        self.reexports[path] = {}
        self.uses[path] = []
        # Inline modules: track which module each position is in.
        stack = [(module, -1)]
        depth = 0
        pos = 0
        tokens = re.finditer(
            r"(?P<mod>\bmod\s+(?P<name>" + IDENT + r")\s*(?P<end>[;{]))"
            r"|(?P<use>\b(?P<pub>pub(?:\([^)]*\))?\s+)?use\s+(?P<tree>[^;]+);)"
            r"|(?P<open>\{)|(?P<close>\})"
            r"|(?P<path>(?<![A-Za-z0-9_:])(?P<head>" + IDENT + r")(?P<rest>(?:::" + IDENT + r")+))",
            code,
        )
        for t in tokens:
            current = stack[-1][0]
            if t.group("mod"):
                name = t.group("name")
                child = current + (name,)
                self.children.setdefault(current, set()).add(name)
                if t.group("end") == ";":
                    base = path.parent if path.name in ("lib.rs", "mod.rs") else path.with_suffix("")
                    for candidate in (base / f"{name}.rs", base / name / "mod.rs"):
                        if candidate.exists():
                            self.load(candidate, child)
                            break
                else:
                    depth += 1
                    self.files[child] = path
                    self.children.setdefault(child, set())
                    stack.append((child, depth))
            elif t.group("use"):
                for segments, alias in expand_use_tree(t.group("tree")):
                    self.uses[path].append((current, segments))
                    if t.group("pub") and alias != "*":
                        self.reexports[path][alias] = (current, segments)
            elif t.group("open"):
                depth += 1
            elif t.group("close"):
                if stack[-1][1] == depth:
                    stack.pop()
                depth -= 1
            elif t.group("path"):
                segments = [t.group("head")] + t.group("rest").split("::")[1:]
                self.uses[path].append((current, segments))

    def absolute(self, module, segments):
        """The absolute module path `segments` names from `module`, or None (another crate)."""
        head, rest = segments[0], list(segments[1:])
        if head == "crate":
            return rest
        if head in ("self", "super"):
            base = list(module)
            while segments and segments[0] in ("self", "super"):
                if segments[0] == "super":
                    base = base[:-1]
                segments = segments[1:]
            return base + list(segments)
        if head in self.children.get(module, ()):
            return list(module) + list(segments)
        return None

    def resolve(self, module, segments, seen=()):
        """The file defining what `segments` (from `module`) names, or None."""
        path = self.absolute(module, segments)
        if path is None:
            return None
        i = len(path)
        while i > 0 and tuple(path[:i]) not in self.files:
            i -= 1
        target = self.files[tuple(path[:i])]
        if i < len(path):
            exported = self.reexports.get(target, {}).get(path[i])
            key = (target, path[i])
            if exported and key not in seen:
                deeper = self.resolve(exported[0], exported[1] + path[i + 1 :], seen + (key,))
                if deeper is not None:
                    return deeper
        return target

    def graph(self):
        edges = {path: set() for path in self.uses}
        for path, uses in self.uses.items():
            for module, segments in uses:
                target = self.resolve(module, segments)
                if target is not None and target != path:
                    edges[path].add(target)
        return edges


def cycles(edges):
    """Strongly connected sets of more than one file (Tarjan)."""
    index, low, on_stack, stack, found = {}, {}, set(), [], []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(10000)
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def one_circle(edges, component):
    """A shortest circle through the first file of `component`, as a list of files."""
    members = set(component)
    start = component[0]
    paths = {start: [start]}
    queue = [start]
    while queue:
        v = queue.pop(0)
        for w in sorted(edges[v] & members):
            if w == start:
                return paths[v] + [start]
            if w not in paths:
                paths[w] = paths[v] + [w]
                queue.append(w)
    return component


def main():
    src = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent / "src"
    crate = Crate(src)
    edges = crate.graph()
    name = lambda p: str(p.relative_to(src.parent))
    found = cycles(edges)
    for component in found:
        print(f"import circle among {len(component)} files: {', '.join(map(name, component))}")
        print("  for example: " + " -> ".join(map(name, one_circle(edges, component))))
    if found:
        print(f"{len(found)} circle(s) of imports between files of {name(src)}", file=sys.stderr)
        return 1
    count = sum(len(e) for e in edges.values())
    print(f"no import circles: {len(edges)} files of {name(src)}, {count} edges between them")
    return 0


if __name__ == "__main__":
    sys.exit(main())
