#!/usr/bin/env python3
"""Finds import cycles between the source files of each library crate.

File A depends on file B when A names an item (type, function, constant, trait, module)
that B defines: through `use` declarations and `crate::`/`super::`/`self::` paths, with
re-exports followed to the file that defines the item (a `pub use` is a signpost, not a
dependency). Test modules (`#[cfg(test)]`) are left out: tests may reach anywhere.

A cycle means two files cannot be understood, changed or moved apart; each printed
group is a strongly connected set of files. Exit status 1 when any crate has one.

    python3 .ci/module-cycles.py [--explain] [CRATE_DIR ...]   # default: every library
    (--explain prints, for each edge inside a cycle, the paths that make it)
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ITEM = re.compile(
    r"^\s*(?:pub(?:\([^)]*\))?\s+)?(?:(?:const|async|unsafe|extern\s+\"C\")\s+)*"
    r"(struct|enum|fn|const|static|type|trait|union)\s+([A-Za-z_][A-Za-z0-9_]*)",
    re.M,
)
MACRO = re.compile(r"^\s*macro_rules!\s*([A-Za-z_][A-Za-z0-9_]*)", re.M)
MOD_DECL = re.compile(r"^\s*((?:#\[[^\]]*\]\s*)*)(?:pub(?:\([^)]*\))?\s+)?mod\s+(\w+)\s*;", re.M)
USE = re.compile(r"(?:^|[;{}\s])((?:pub(?:\([^)]*\))?\s+)?use)\s+([^;]+);", re.M)
CHILD_PATH = re.compile(r"(?<![A-Za-z0-9_:])([a-z_][a-z0-9_]*)::([A-Za-z_][A-Za-z0-9_]*)")
INLINE = re.compile(r"\b((?:crate|super|self)(?:::[A-Za-z_][A-Za-z0-9_]*)+)")


def strip_comments(text: str) -> str:
    """Drops comments and string contents, keeping line structure."""
    out, i, n = [], 0, len(text)
    while i < n:
        if text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif text.startswith("/*", i):
            j = text.find("*/", i)
            i = n if j < 0 else j + 2
        elif text[i] == '"' and not re.match(r"[A-Za-z0-9_']", text[i - 1] if i else " "):
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append('""')
            i = j + 1
        elif text.startswith("r#\"", i):
            j = text.find('"#', i + 3)
            out.append('""')
            i = n if j < 0 else j + 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def strip_test_modules(text: str) -> str:
    """Removes `#[cfg(test)]` items with a body (`mod tests { ... }`, test helpers)."""
    while True:
        m = re.search(r"#\[cfg\((?:test|any\(test[^\]]*)\)\]\s*(?:#\[[^\]]*\]\s*)*[^;{]*\{", text)
        if not m:
            return text
        depth, j = 1, m.end()
        while j < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            j += 1
        text = text[: m.start()] + text[j:]


def use_paths(tree: str, prefix: list[str]) -> list[tuple[list[str], str]]:
    """Expands a use tree (`a::{b, c::{d as e}}`) to (path, local name) pairs."""
    tree = tree.strip()
    depth = 0
    for k, ch in enumerate(tree):
        if ch == "{":
            if depth == 0:
                head = [s for s in tree[:k].split("::") if s.strip()]
                inner = tree[k + 1 : tree.rfind("}")]
                parts, d, start = [], 0, 0
                for q, c in enumerate(inner):
                    d += {"{": 1, "}": -1}.get(c, 0)
                    if c == "," and d == 0:
                        parts.append(inner[start:q])
                        start = q + 1
                parts.append(inner[start:])
                out = []
                for part in parts:
                    if part.strip():
                        out += use_paths(part, prefix + [h.strip() for h in head])
                return out
            depth += 1
        elif ch == "}":
            depth -= 1
    alias = None
    if " as " in tree:
        tree, alias = [s.strip() for s in tree.split(" as ", 1)]
    path = prefix + [s.strip() for s in tree.split("::") if s.strip()]
    if path and path[-1] == "self":
        path = path[:-1]
    local = alias or (path[-1] if path else "")
    return [(path, local)]


class Crate:
    def __init__(self, src: Path, root: str):
        self.files: dict[tuple[str, ...], Path] = {}
        self.text: dict[tuple[str, ...], str] = {}
        self.children: dict[tuple[str, ...], set[str]] = {}
        self._load((), src / root, src)

    def _load(self, module: tuple[str, ...], path: Path, src: Path) -> None:
        text = strip_test_modules(strip_comments(path.read_text()))
        self.files[module] = path
        self.text[module] = text
        self.children[module] = set()
        base = path.parent if path.name in ("lib.rs", "mod.rs", "main.rs") else path.with_suffix("")
        for attrs, name in MOD_DECL.findall(text):
            if "cfg(test)" in attrs or "cfg(any(test" in attrs:
                continue
            for candidate in (base / f"{name}.rs", base / name / "mod.rs"):
                if candidate.exists():
                    self.children[module].add(name)
                    self._load(module + (name,), candidate, src)
                    break

    def definitions(self, module: tuple[str, ...]) -> set[str]:
        text = self.text[module]
        return {m.group(2) for m in ITEM.finditer(text)} | set(MACRO.findall(text))

    def uses(self, module: tuple[str, ...], public_only: bool, private_only: bool = False):
        for m in USE.finditer(self.text[module]):
            is_pub = m.group(1).startswith("pub")
            if (public_only and not is_pub) or (private_only and is_pub):
                continue
            yield from use_paths(m.group(2), [])

    def absolute(self, module: tuple[str, ...], path: list[str]) -> list[str] | None:
        """A path relative to `module` as segments from the crate root, or None if it
        leaves the crate."""
        if not path:
            return None
        if path[0] == "crate":
            return path[1:]
        if path[0] in ("super", "self"):
            here = list(module)
            for k, seg in enumerate(path):
                if seg == "super":
                    here = here[:-1]
                elif seg == "self":
                    continue
                else:
                    return here + path[k:]
            return here
        if path[0] in self.children[module]:
            return list(module) + path
        return None

    def resolve(self, segments: list[str], seen: int = 0) -> tuple[str, ...] | None:
        """The module whose file defines what `segments` (from the root) names."""
        if seen > 16:
            return None
        module: tuple[str, ...] = ()
        for k, seg in enumerate(segments):
            if seg in self.children[module]:
                module = module + (seg,)
                continue
            if seg in self.definitions(module):
                return module
            for path, local in self.uses(module, public_only=True):
                if local == seg or local == "*":
                    target = self.absolute(module, path if local != "*" else path[:-1] + [seg])
                    if target is not None:
                        found = self.resolve(target + segments[k + 1 :], seen + 1)
                        if found is not None:
                            return found
            return None
        return module

    def edges(self) -> dict[tuple[str, ...], set[tuple[str, ...]]]:
        graph: dict[tuple[str, ...], set[tuple[str, ...]]] = {m: set() for m in self.files}
        self.why: dict[tuple, set[str]] = {}
        for module, text in self.text.items():
            imports = list(self.uses(module, public_only=False, private_only=True))
            paths = [p for p, local in imports if local != "*"]
            paths += [p[:-1] for p, local in imports if local == "*"]
            body = USE.sub(" ", text)  # `use` trees are read above; `pub use` is a signpost
            paths += [m.group(1).split("::") for m in INLINE.finditer(body)]
            # `child::item` in a parent module names the child's item without a prefix.
            paths += [
                [m.group(1), m.group(2)]
                for m in CHILD_PATH.finditer(body)
                if m.group(1) in self.children[module]
            ]
            for path in paths:
                target = self.absolute(module, path)
                if target is None:
                    continue
                found = self.resolve(target)
                # A file's own ancestors' re-exports are signposts; depending on a
                # child module's file is a real edge only when it defines the item.
                if found is not None and found != module:
                    graph[module].add(found)
                    self.why.setdefault((module, found), set()).add("::".join(path))
        return graph


def cycles(graph):
    """Tarjan's strongly connected components with more than one member."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    sys.setrecursionlimit(10000)
    for v in graph:
        if v not in index:
            visit(v)
    return out


def main(argv: list[str]) -> int:
    explain = "--explain" in argv
    argv = [a for a in argv if a != "--explain"]
    repo = Path(__file__).resolve().parent.parent
    crates = [Path(a).resolve() for a in argv] or sorted(
        p.parent.parent for p in repo.glob("*/src/lib.rs") if p.parent.parent.name != "fuzz"
    )
    found = 0
    for crate_dir in crates:
        crate = Crate(crate_dir / "src", "lib.rs")
        graph = crate.edges()
        crate.edges_of = lambda m, g=graph: g[m]
        for group in cycles(graph):
            names = ", ".join(str(crate.files[m].relative_to(repo)) for m in group)
            found += 1
            print(f"cycle in {crate_dir.name}: {names}")
            if explain:
                members = set(group)
                for a in group:
                    for b in sorted(crate.edges_of(a) & members):
                        refs = ", ".join(sorted(crate.why[(a, b)])[:6])
                        print(f"    {'/'.join(a) or 'lib'} -> {'/'.join(b) or 'lib'}: {refs}")
    if found:
        print(f"{found} import cycle(s): move the shared items to a module both can depend on")
        return 1
    print(f"no import cycle in {len(crates)} crates")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
