#!/usr/bin/env python3
"""List the crates compiled into the `hearth` binary with their versions and licenses, as markdown.

Usage: cargo metadata --format-version 1 --filter-platform x86_64-unknown-linux-gnu | scripts/licenses.py

Walks the resolved dependency graph from the `gateway` package (normal dependencies only: no build or dev
dependencies, which are not shipped) and prints one table row per crate.
"""
import json
import sys


def main() -> None:
    meta = json.load(sys.stdin)
    packages = {p["id"]: p for p in meta["packages"]}
    nodes = {n["id"]: n for n in meta["resolve"]["nodes"]}
    root = next(p["id"] for p in meta["packages"] if p["name"] == "gateway")
    seen, stack = set(), [root]
    while stack:
        node = nodes[stack.pop()]
        if node["id"] in seen:
            continue
        seen.add(node["id"])
        for dep in node["deps"]:
            if any(kind["kind"] is None for kind in dep["dep_kinds"]):
                stack.append(dep["pkg"])
    workspace = set(meta["workspace_members"])
    rows = sorted(
        (packages[i]["name"], packages[i]["version"], packages[i].get("license") or "see the crate's license file")
        for i in seen
        if i not in workspace
    )
    print("# Third-party crates in the hearth binary\n")
    print(f"{len(rows)} crates, from crates.io. License expressions as each crate declares them.\n")
    print("| crate | version | license |\n|---|---|---|")
    for name, version, license_ in rows:
        print(f"| {name} | {version} | {license_} |")


if __name__ == "__main__":
    main()
