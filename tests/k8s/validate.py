#!/usr/bin/env python3
"""Validate Kubernetes resources against the API's schemas, offline, with kubernetes-validate's bundled ones.

Usage: validate.py --kubernetes-version 1.29 [--kubernetes-version ...] FILE.yaml...

Strict: a field the schema does not have is an error, and so is a kind or apiVersion the version has no schema
for (kubernetes-validate's own command only warns about those). One line per resource and version; the exit
status is 1 when any failed.
"""

import argparse
import sys

import kubernetes_validate
import yaml
from kubernetes_validate.utils import SchemaNotFoundError, ValidationError, VersionNotSupportedError


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kubernetes-version", action="append", required=True)
    parser.add_argument("files", nargs="+")
    args = parser.parse_args()
    failed = 0
    for path in args.files:
        with open(path, encoding="utf-8") as f:
            resources = [r for r in yaml.safe_load_all(f) if r is not None]
        if not resources:
            print(f"FAIL {path}: no resources")
            failed += 1
        for resource in resources:
            name = f"{resource.get('kind')}/{(resource.get('metadata') or {}).get('name')}"
            for version in args.kubernetes_version:
                try:
                    kubernetes_validate.validate(resource, version, strict=True)
                except ValidationError as err:
                    where = ".".join(str(p) for p in err.path) or "(the resource)"
                    print(f"FAIL {path}: {name} against Kubernetes {version}: {where}: {err.message}")
                    failed += 1
                except SchemaNotFoundError as err:
                    print(f"FAIL {path}: {name}: {err.message}")
                    failed += 1
                except VersionNotSupportedError as err:
                    print(f"FAIL kubernetes-validate {kubernetes_validate.__version__}: {err.message}")
                    return 1
                else:
                    print(f"ok   {path}: {name} against Kubernetes {version} (strict)")
    if failed:
        print(f"validate.py: {failed} failure(s)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
