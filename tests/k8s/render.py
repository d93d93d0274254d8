#!/usr/bin/env python3
"""Render a kustomization as `kubectl kustomize` does, without kubectl, and check what the schemas cannot.

Usage: render.py DIR --secret SECRET.yaml [-o OUT.yaml] [--hearth-config OUTDIR]

Only the part of kustomize that packaging/k8s uses: `resources` (files, or directories holding a
kustomization.yaml) and `patches` given by `path`, each a strategic merge patch of the one resource with its
apiVersion, kind and name. Maps merge key by key, `null` deletes, and lists merge as the Kubernetes types say:
by the merge keys of MERGE_KEYS, replaced whole for ATOMIC, and any other list a patch sets where the base has
one is an error, as is every other kustomization field or patch form: the renderer refuses what it could get
wrong rather than guess. Every file a kustomization names must exist.

Then it checks the references between the rendered resources and the Secret (SECRET.yaml, which is not part
of the kustomizations): volume mounts name volumes; the ConfigMap, PersistentVolumeClaim, Secret and Secret
keys the pods use exist; the Deployment's, Service's and PodDisruptionBudget's selectors pick the pods; named
ports exist; and the hearth.toml of the ConfigMap, with its commented-out section lines read as uncommented,
parses, uses only keys gateway/hearth.example.toml documents, and names its *_file keys, model files, data
directory and --config file on the volumes that hold them.

The rendered resources go to OUT.yaml (default: stdout), as one YAML stream. With --hearth-config, OUTDIR gets
the files for `hearth config check` (run.sh runs it), the container paths moved under OUTDIR:
  shipped/hearth.toml, shipped/secrets/*   the ConfigMap and the Secret as they are
  filled/hearth.toml, filled/secrets/*     commented-out section lines uncommented, each secret a test value
  data_url                                 the Secret's data_url (HEARTH_DATA__URL)
Any problem is printed, naming the file or resource, and the exit status is 1.
"""

import argparse
import base64
import copy
import os
import re
import sys
import tomllib

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLE_CONFIG = os.path.join(ROOT, "gateway", "hearth.example.toml")

# Strategic merge keys (the `patchMergeKey` tags of k8s.io/api) of the lists a patch here may touch; paths
# are from a resource's root, list items written as [].
POD = "spec.template.spec"
MERGE_KEYS = {
    f"{POD}.containers": "name",
    f"{POD}.initContainers": "name",
    f"{POD}.volumes": "name",
    f"{POD}.imagePullSecrets": "name",
    f"{POD}.containers[].env": "name",
    f"{POD}.containers[].volumeMounts": "mountPath",
    f"{POD}.containers[].ports": "containerPort",
}
# Lists without a patch strategy: a patch replaces them whole.
ATOMIC = {
    f"{POD}.tolerations",
    f"{POD}.containers[].command",
    f"{POD}.containers[].args",
}
KUSTOMIZATION_FIELDS = {"apiVersion", "kind", "resources", "patches"}

# A commented-out line of hearth.toml that is configuration, not prose: `# [section]` or `# key = value`.
COMMENTED_SETTING = re.compile(r"^(\s*)# (\[[a-z_.\[\]]+\]$|[a-z0-9_]+ = )")


class RenderError(Exception):
    pass


def load_documents(path):
    try:
        with open(path, encoding="utf-8") as f:
            return [doc for doc in yaml.safe_load_all(f) if doc is not None]
    except (OSError, yaml.YAMLError) as err:
        raise RenderError(f"{path}: {err}") from None


def identity(resource):
    return (resource.get("apiVersion"), resource.get("kind"), (resource.get("metadata") or {}).get("name"))


def describe(resource):
    return "{1}/{2} ({0})".format(*identity(resource))


def render(directory):
    """The resources of the kustomization in `directory`, patched."""
    path = os.path.join(directory, "kustomization.yaml")
    if not os.path.isfile(path):
        raise RenderError(f"{directory}: no kustomization.yaml")
    docs = load_documents(path)
    if len(docs) != 1 or not isinstance(docs[0], dict):
        raise RenderError(f"{path}: expected one YAML mapping")
    kustomization = docs[0]
    unknown = set(kustomization) - KUSTOMIZATION_FIELDS
    if unknown:
        raise RenderError(f"{path}: render.py does not implement {', '.join(sorted(unknown))}")
    if (kustomization.get("apiVersion"), kustomization.get("kind")) != (
        "kustomize.config.k8s.io/v1beta1",
        "Kustomization",
    ):
        raise RenderError(f"{path}: apiVersion/kind must be kustomize.config.k8s.io/v1beta1 Kustomization")
    resources = []
    for entry in kustomization.get("resources") or []:
        target = os.path.normpath(os.path.join(directory, entry))
        if os.path.isdir(target):
            found = render(target)
        elif os.path.isfile(target):
            found = load_documents(target)
        else:
            raise RenderError(f"{path}: resource {entry} does not exist ({target})")
        for resource in found:
            if not isinstance(resource, dict) or not all(identity(resource)):
                raise RenderError(f"{target}: a resource needs apiVersion, kind and metadata.name")
            if any(identity(r) == identity(resource) for r in resources):
                raise RenderError(f"{path}: {describe(resource)} appears twice")
            resources.append(resource)
    for entry in kustomization.get("patches") or []:
        if not isinstance(entry, dict) or set(entry) != {"path"}:
            raise RenderError(f"{path}: render.py implements patches given as `- path: FILE` only, not {entry!r}")
        target = os.path.normpath(os.path.join(directory, entry["path"]))
        if not os.path.isfile(target):
            raise RenderError(f"{path}: patch {entry['path']} does not exist ({target})")
        patches = load_documents(target)
        if len(patches) != 1 or not isinstance(patches[0], dict):
            raise RenderError(f"{target}: expected one patch")
        patch = patches[0]
        matches = [i for i, r in enumerate(resources) if identity(r) == identity(patch)]
        if len(matches) != 1:
            raise RenderError(f"{target}: patches {describe(patch)}, which the resources have {len(matches)} times")
        resources[matches[0]] = merge(resources[matches[0]], patch, "", target)
    return resources


def merge(base, patch, path, source):
    """The strategic merge of `patch` into `base` (both maps) at `path`."""
    merged = copy.deepcopy(base)
    for key, value in patch.items():
        here = f"{path}.{key}" if path else key
        if key.startswith("$"):
            raise RenderError(f"{source}: {here}: render.py does not implement patch directives")
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value, here, source)
        elif isinstance(value, list) and isinstance(merged.get(key), list):
            merged[key] = merge_list(merged[key], value, here, source)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def merge_list(base, patch, path, source):
    if path in ATOMIC:
        return copy.deepcopy(patch)
    key = MERGE_KEYS.get(path)
    if key is None:
        raise RenderError(
            f"{source}: {path}: render.py does not know how kustomize merges this list; add it to MERGE_KEYS or "
            "ATOMIC from its patchMergeKey/patchStrategy in k8s.io/api"
        )
    for item in base + patch:
        if not isinstance(item, dict) or key not in item:
            raise RenderError(f"{source}: {path}: every item needs its merge key {key}")
    patched = {item[key]: item for item in patch}
    # kustomize puts the patch's new items first, then the base's in their order.
    known = {item[key] for item in base}
    merged = [copy.deepcopy(item) for item in patch if item[key] not in known]
    for item in base:
        if item[key] in patched:
            merged.append(merge(item, patched[item[key]], f"{path}[]", source))
        else:
            merged.append(copy.deepcopy(item))
    return merged


def secret_values(secret):
    """The Secret's keys and values (stringData as is, data base64-decoded)."""
    values = dict(secret.get("stringData") or {})
    for key, value in (secret.get("data") or {}).items():
        values[key] = base64.b64decode(value).decode("utf-8")
    return values


def uncomment_settings(text):
    return "\n".join(COMMENTED_SETTING.sub(r"\1\2", line) for line in text.split("\n"))


def documented_keys():
    with open(EXAMPLE_CONFIG, encoding="utf-8") as f:
        example = f.read()
    return set(re.findall(r"^#?\s*\[{1,2}([a-z_.]+)\]{1,2}\s*$", example, re.M)), set(
        re.findall(r"^#?\s*([a-z0-9_]+) =", example, re.M)
    )


def toml_keys(table, prefix=""):
    """(section, key) of every setting; [[arrays of tables]] are sections too."""
    for key, value in table.items():
        if isinstance(value, dict):
            yield from toml_keys(value, f"{prefix}{key}.")
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            for item in value:
                yield from toml_keys(item, f"{prefix}{key}.")
        else:
            yield prefix.rstrip("."), key


def under(path, directory):
    return path.startswith(directory.rstrip("/") + "/")


def check(resources, secret):
    """Problems with the references between `resources` and `secret`, as messages."""
    problems = []
    by_kind = {}
    for resource in resources:
        by_kind.setdefault(resource["kind"], {})[resource["metadata"]["name"]] = resource
    secrets = {secret["metadata"]["name"]: secret_values(secret)}
    deployments = by_kind.get("Deployment", {})
    if not deployments:
        problems.append("no Deployment")
    for name, deployment in deployments.items():
        where = f"Deployment/{name}"
        template = deployment["spec"]["template"]
        labels = template["metadata"].get("labels") or {}
        pod = template["spec"]
        selector = deployment["spec"]["selector"].get("matchLabels") or {}
        if not selector or any(labels.get(k) != v for k, v in selector.items()):
            problems.append(f"{where}: spec.selector does not pick its own pods")
        for kind in ("Service", "PodDisruptionBudget"):
            for other_name, other in by_kind.get(kind, {}).items():
                spec = other["spec"]
                wanted = spec.get("selector") if kind == "Service" else spec["selector"].get("matchLabels")
                if not wanted or any(labels.get(k) != v for k, v in wanted.items()):
                    problems.append(f"{kind}/{other_name}: its selector does not pick the pods of {where}")
        volumes = {v["name"]: v for v in pod.get("volumes") or []}
        for volume in volumes.values():
            if "configMap" in volume and volume["configMap"]["name"] not in by_kind.get("ConfigMap", {}):
                problems.append(f"{where}: volume {volume['name']} names a ConfigMap that is not rendered")
            if "secret" in volume and volume["secret"]["secretName"] not in secrets:
                problems.append(f"{where}: volume {volume['name']} names a Secret that is not {list(secrets)}")
            claim = volume.get("persistentVolumeClaim")
            if claim and claim["claimName"] not in by_kind.get("PersistentVolumeClaim", {}):
                problems.append(f"{where}: volume {volume['name']} names a claim that is not rendered")
        for container in pod["containers"]:
            cwhere = f"{where} container {container['name']}"
            mounts = {}
            for mount in container.get("volumeMounts") or []:
                if mount["name"] not in volumes:
                    problems.append(f"{cwhere}: volumeMount {mount['mountPath']} names no volume {mount['name']}")
                    continue
                mounts[mount["mountPath"]] = (volumes[mount["name"]], mount.get("readOnly", False))
            for env in container.get("env") or []:
                ref = (env.get("valueFrom") or {}).get("secretKeyRef")
                if ref and ref["key"] not in secrets.get(ref["name"], {}):
                    problems.append(f"{cwhere}: env {env['name']} needs key {ref['key']} of Secret {ref['name']}")
            port_names = {p.get("name") for p in container.get("ports") or []}
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                port = ((container.get(probe) or {}).get("httpGet") or {}).get("port")
                if isinstance(port, str) and port not in port_names:
                    problems.append(f"{cwhere}: {probe} uses port {port}, which the container does not name")
            for service_name, service in by_kind.get("Service", {}).items():
                for port in service["spec"]["ports"]:
                    target = port.get("targetPort")
                    if isinstance(target, str) and target not in port_names:
                        problems.append(f"Service/{service_name}: targetPort {target} is no port of {cwhere}")
            problems += check_hearth_config(cwhere, container, mounts, by_kind, secrets)
    return problems


def mount_of(path, mounts):
    """The deepest mount holding `path`: (mountPath, volume, readOnly), or None."""
    holding = [m for m in mounts if under(path, m) or path == m]
    if not holding:
        return None
    mount_path = max(holding, key=len)
    return (mount_path, *mounts[mount_path])


def check_hearth_config(where, container, mounts, by_kind, secrets):
    problems = []
    args = container.get("args") or []
    if "--config" not in args[:-1]:
        return [f"{where}: no --config FILE in args"]
    config_path = args[args.index("--config") + 1]
    held = mount_of(config_path, mounts)
    if held is None or "configMap" not in held[1]:
        return [f"{where}: --config {config_path} is not on a ConfigMap volume"]
    mount_path, volume, _ = held
    config_map = by_kind["ConfigMap"].get(volume["configMap"]["name"])
    if config_map is None:
        return problems  # reported with the volumes
    key = os.path.relpath(config_path, mount_path)
    text = (config_map.get("data") or {}).get(key)
    if text is None:
        return [f"{where}: --config {config_path}: ConfigMap/{config_map['metadata']['name']} has no key {key}"]
    cwhere = f"ConfigMap/{config_map['metadata']['name']} {key}"
    try:
        config = tomllib.loads(uncomment_settings(text))
    except tomllib.TOMLDecodeError as err:
        return [f"{cwhere} (its commented-out settings uncommented): {err}"]
    sections, keys = documented_keys()
    for section, name in toml_keys(config):
        if section and section not in sections:
            problems.append(f"{cwhere}: [{section}] is not a section of {os.path.relpath(EXAMPLE_CONFIG, ROOT)}")
        elif name not in keys:
            problems.append(f"{cwhere}: {section}.{name} is not a key of {os.path.relpath(EXAMPLE_CONFIG, ROOT)}")

    def on_volume(setting, path, want, writable=False):
        held = mount_of(path, mounts)
        if held is None or want not in held[1]:
            problems.append(f"{cwhere}: {setting} = {path} is not on a {want} volume")
        elif writable and held[2]:
            problems.append(f"{cwhere}: {setting} = {path} is on a read-only mount")
        return held

    for section, table in config.items():
        if not isinstance(table, dict):
            continue
        for name, value in table.items():
            if name.endswith("_file") and isinstance(value, str):
                held = on_volume(f"{section}.{name}", value, "secret")
                if held and "secret" in held[1]:
                    secret_name = held[1]["secret"]["secretName"]
                    secret_key = os.path.relpath(value, held[0])
                    if secret_key not in secrets.get(secret_name, {}):
                        problems.append(f"{cwhere}: {section}.{name} = {value}: no key {secret_key} in {secret_name}")
    for i, model in enumerate(config.get("models") or []):
        on_volume(f"models[{i}].path", model["path"], "persistentVolumeClaim")
    data_dir = (config.get("data") or {}).get("dir")
    held = mount_of(data_dir, mounts) if data_dir else None
    if data_dir is None:
        problems.append(f"{cwhere}: set [data] dir (else hearth writes under $HOME)")
    elif held is None or held[0] != data_dir or held[2]:
        problems.append(f"{cwhere}: [data] dir = {data_dir} is not the mount path of a writable volume")
    for setting, path in (("workingDir", container.get("workingDir")), ("/tmp", "/tmp")):
        held = mount_of(path, mounts) if path else None
        if path and (held is None or held[2]):
            problems.append(f"{where}: {setting} {path} is not on a writable volume (the root is read-only)")
    return problems


def write_hearth_config(out, resources, secret):
    """The files for `hearth config check` (see the module's doc)."""
    deployment = next(r for r in resources if r["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    args = container["args"]
    config_path = args[args.index("--config") + 1]
    config_mount = max((m for m in mounts if under(config_path, m)), key=len)
    config_map = next(r for r in resources if r["kind"] == "ConfigMap"
                      and r["metadata"]["name"] == volumes[mounts[config_mount]]["configMap"]["name"])
    text = config_map["data"][os.path.relpath(config_path, config_mount)]
    secret_mount = next(m for m, name in mounts.items() if "secret" in volumes[name])
    values = secret_values(secret)
    for variant in ("shipped", "filled"):
        directory = os.path.abspath(os.path.join(out, variant))
        os.makedirs(os.path.join(directory, "secrets"), exist_ok=True)
        body = text if variant == "shipped" else uncomment_settings(text)
        body = body.replace(f'"{secret_mount}/', f'"{directory}/secrets/')
        with open(os.path.join(directory, "hearth.toml"), "w", encoding="utf-8") as f:
            f.write(body)
        for key, value in values.items():
            if variant == "filled":
                value = f"test-value-of-{key}-" + "x" * 16
            path = os.path.join(directory, "secrets", key)
            with open(path, "w", encoding="utf-8") as f:
                f.write(value)
            os.chmod(path, 0o600)
    with open(os.path.join(out, "data_url"), "w", encoding="utf-8") as f:
        f.write(values["data_url"])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("directory")
    parser.add_argument("--secret", required=True, help="the Secret the pods use (not in the kustomization)")
    parser.add_argument("-o", "--output")
    parser.add_argument("--hearth-config", metavar="OUTDIR")
    args = parser.parse_args()
    try:
        resources = render(args.directory)
        secrets = load_documents(args.secret)
        if len(secrets) != 1 or secrets[0].get("kind") != "Secret":
            raise RenderError(f"{args.secret}: expected one Secret")
        problems = check(resources, secrets[0])
    except RenderError as err:
        problems = [str(err)]
    except (KeyError, TypeError, AttributeError, ValueError) as err:
        problems = [f"{args.directory}: a resource lacks a field the check reads ({type(err).__name__}: {err})"]
    if problems:
        for problem in problems:
            print(f"render.py: {args.directory}: {problem}", file=sys.stderr)
        return 1
    stream = yaml.safe_dump_all(resources, sort_keys=True, default_flow_style=False)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(stream)
    else:
        sys.stdout.write(stream)
    if args.hearth_config:
        write_hearth_config(args.hearth_config, resources, secrets[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
