#!/usr/bin/env python3
"""The file-level import graph of a Rust crate's src/ (`crate::`, `super::`, `self::` and child-module paths, unit-test
modules left out) and its cycles (Tarjan's strongly connected components). Exits 1 when there is a cycle.

Usage: scripts/import-graph.py gateway/src [-v]   (-v: every file's imports)
"""
import os, re, sys

src = sys.argv[1]
files = {}
for root, _, names in os.walk(src):
    for n in names:
        if n.endswith(".rs"):
            p = os.path.relpath(os.path.join(root, n), src)
            files[p] = open(os.path.join(root, n)).read()

# The binary (`main.rs` and the modules it declares) sits on top of the library; only the library is checked.
main = os.path.join(src, "main.rs")
skip_bin = {"main.rs"}
if os.path.exists(main):
    skip_bin |= {m + ".rs" for m in re.findall(r"^\s*(?:pub\s+)?mod\s+(\w+)\s*;", open(main).read(), re.M)}


def module_path(f):
    parts = f[:-3].split("/")
    if parts[-1] in ("mod", "lib"):
        parts = parts[:-1]
    return parts

def resolve(parts):
    """Longest prefix of module path `parts` that names a file."""
    for k in range(len(parts), -1, -1):
        pre = parts[:k]
        for cand in ("/".join(pre) + ".rs", "/".join(pre + ["mod"]) + ".rs") if pre else ("lib.rs",):
            if cand in files:
                return cand
    return None

def strip_comments(t):
    t = re.sub(r"//[^\n]*", "", t)
    return re.sub(r"/\*.*?\*/", "", t, flags=re.S)

def expand(tree):
    """Paths of a use tree `a::{b, c::{d}}` as lists."""
    tree = tree.strip()
    depth = 0
    for i, ch in enumerate(tree):
        if ch == "{":
            head = tree[:i].rstrip(":").strip()
            inner = tree[i + 1 : tree.rindex("}")]
            items, d, cur = [], 0, ""
            for c in inner:
                if c == "," and d == 0:
                    items.append(cur); cur = ""
                    continue
                d += c == "{"; d -= c == "}"
                cur += c
            items.append(cur)
            out = []
            for it in items:
                if it.strip():
                    for sub in expand(it):
                        out.append(([p for p in head.split("::") if p]) + sub)
            return out
    tree = tree.split(" as ")[0]
    return [[p for p in tree.split("::") if p]]

edges = {}
for f, text in files.items():
    if f in skip_bin:
        continue
    t = strip_comments(text)
    # A unit-test module (`#[cfg(test)] mod tests`) may import anything of its parent; it is not part of the graph.
    t = re.split(r"#\[cfg\(test\)\]\s*mod\s+\w+\s*[{;]", t)[0]
    # drop #[cfg(test)] mod tests { ... } bodies roughly: test modules may import freely
    here = module_path(f)
    paths = []
    for m in re.finditer(r"\buse\s+([^;]+);", t):
        paths += expand(m.group(1))
    for m in re.finditer(r"(?<![:\w])((?:crate|super|self|\w+)(?:::\w+)+)", t):
        paths.append(m.group(1).split("::"))
    targets = set()
    for p in paths:
        if not p:
            continue
        if p[0] == "crate":
            mod = p[1:]
        elif p[0] == "super":
            base = here[:]
            while p and p[0] == "super":
                base = base[:-1]; p = p[1:]
            mod = base + p
        elif p[0] == "self":
            mod = here + p[1:]
        elif resolve(here + p[:1]) not in (None, f) and resolve(here + p[:1]) == resolve(here + p[:1] + ["x"]):
            mod = here + p  # a child module, named relative to this one
        else:
            continue
        r = resolve(mod)
        if r and r != f and r != "lib.rs" and r not in skip_bin:
            targets.add(r)
    edges[f] = targets

# Tarjan
index, low, stack, on, sccs, counter = {}, {}, [], set(), [], [0]
def strong(v):
    index[v] = low[v] = counter[0]; counter[0] += 1
    stack.append(v); on.add(v)
    for w in edges.get(v, ()):
        if w not in index:
            strong(w); low[v] = min(low[v], low[w])
        elif w in on:
            low[v] = min(low[v], index[w])
    if low[v] == index[v]:
        comp = []
        while True:
            w = stack.pop(); on.discard(w); comp.append(w)
            if w == v:
                break
        sccs.append(comp)
sys.setrecursionlimit(10000)
for v in edges:
    if v not in index:
        strong(v)
cycles = [sorted(c) for c in sccs if len(c) > 1]
if "-v" in sys.argv:
    for f in sorted(edges):
        print(f, "->", ", ".join(sorted(edges[f])))
for c in cycles:
    print(f"cycle of {len(c)} files: {' '.join(c)}")
print(f"{len(edges)} files, {sum(map(len, edges.values()))} edges, {len(cycles)} cycles")
sys.exit(1 if cycles else 0)
