"""Render a kustomization the way `kubectl kustomize` does, for the fields our manifests use.

    python deploy/kustomize_render.py deploy/k8s/overlays/gpu

kustomize itself is not installable where CI runs, so tests/test_deploy.py renders the overlays with this
and validates the result. It implements only what deploy/k8s uses and refuses anything else, so a new
kustomize feature in a manifest fails loudly here instead of being silently ignored:
- `resources`: files (several documents each) and directories holding a kustomization;
- `patches` with `path` only: strategic merge patches, matched to one resource by kind and name. Maps
  merge; `null` deletes a key; lists merge by the Kubernetes merge key where the API defines one for the
  fields in MERGE_KEYS (containers by name, env by name, ...), every other list is replaced. A volume
  patched to another source must null the old one (`emptyDir: null`): kustomize does not apply the API's
  `retainKeys` and keeps both sources, which the API rejects, so such a patch is refused here;
- `namespace`: set on every resource (ours are all namespaced);
- `images`: newName / newTag / digest for container images of pod templates.
"""

from __future__ import annotations

import argparse
import copy
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

Resource = dict[str, Any]

KUSTOMIZATION_KEYS = {"apiVersion", "kind", "resources", "patches", "namespace", "images"}
IMAGE_KEYS = {"name", "newName", "newTag", "digest"}
POD_TEMPLATE_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}
_POD = ("spec", "template", "spec")
# (kind, field path without list indices) -> merge key, from the Kubernetes API's patchMergeKey.
MERGE_KEYS: dict[tuple[str, tuple[str, ...]], str] = {}
for _kind in POD_TEMPLATE_KINDS:
    for _list in ("containers", "initContainers"):
        MERGE_KEYS[(_kind, (*_POD, _list))] = "name"
        MERGE_KEYS[(_kind, (*_POD, _list, "env"))] = "name"
        MERGE_KEYS[(_kind, (*_POD, _list, "ports"))] = "containerPort"
        MERGE_KEYS[(_kind, (*_POD, _list, "volumeMounts"))] = "mountPath"
    MERGE_KEYS[(_kind, (*_POD, "volumes"))] = "name"
    MERGE_KEYS[(_kind, (*_POD, "imagePullSecrets"))] = "name"
MERGE_KEYS[("Service", ("spec", "ports"))] = "port"
VOLUME_LISTS = {(kind, (*_POD, "volumes")) for kind in POD_TEMPLATE_KINDS}
# kustomize's default ("legacy") output order: these kinds first, in this order, then the rest.
ORDER_FIRST = [
    "Namespace",
    "ResourceQuota",
    "StorageClass",
    "CustomResourceDefinition",
    "ServiceAccount",
    "PodSecurityPolicy",
    "Role",
    "ClusterRole",
    "RoleBinding",
    "ClusterRoleBinding",
    "ConfigMap",
    "Secret",
    "Endpoints",
    "Service",
    "LimitRange",
    "PriorityClass",
    "PersistentVolume",
    "PersistentVolumeClaim",
    "Deployment",
    "StatefulSet",
    "CronJob",
    "PodDisruptionBudget",
]
ORDER_LAST = ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration")


class RenderError(Exception):
    """The kustomization uses something this renderer does not implement, or is inconsistent."""


def _load_yaml_documents(path: Path) -> list[Resource]:
    docs = [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
    for doc in docs:
        if not isinstance(doc, dict) or "kind" not in doc or "apiVersion" not in doc:
            raise RenderError(f"{path}: every document must be a Kubernetes object with apiVersion and kind")
    return docs


def _kustomization_file(directory: Path) -> Path:
    if not directory.is_dir():
        raise RenderError(f"{directory}: not a directory")
    found = [directory / n for n in ("kustomization.yaml", "kustomization.yml", "Kustomization")]
    found = [p for p in found if p.is_file()]
    if len(found) != 1:
        raise RenderError(f"{directory}: expected exactly one kustomization file, found {len(found)}")
    return found[0]


def _key(resource: Resource) -> tuple[str, str]:
    return resource["kind"], resource.get("metadata", {}).get("name", "")


def _group(api_version: str) -> str:
    return api_version.rsplit("/", 1)[0] if "/" in api_version else ""


def _check_directives(patch: Any, where: str) -> None:
    if isinstance(patch, dict):
        for key, value in patch.items():
            if isinstance(key, str) and key.startswith("$"):
                raise RenderError(f"{where}: patch directive {key} is not implemented by this renderer")
            _check_directives(value, where)
    elif isinstance(patch, list):
        for item in patch:
            _check_directives(item, where)


def strategic_merge(base: Any, patch: Any, kind: str, path: tuple[str, ...] = ()) -> Any:
    """Merge `patch` into a copy of `base` with Kubernetes strategic-merge rules (see module doc)."""
    if isinstance(base, dict) and isinstance(patch, dict):
        merged = dict(base)
        for key, value in patch.items():
            if value is None:
                merged.pop(key, None)
            elif key in merged:
                merged[key] = strategic_merge(merged[key], value, kind, (*path, key))
            else:
                merged[key] = copy.deepcopy(value)
        return merged
    if isinstance(base, list) and isinstance(patch, list):
        merge_key = MERGE_KEYS.get((kind, path))
        if merge_key is None:
            return copy.deepcopy(patch)
        # As kubectl does: the patch's items first (merged into their originals), then the other originals.
        originals = {item.get(merge_key): item for item in base if isinstance(item, dict)}
        merged_list = []
        for item in patch:
            if not isinstance(item, dict) or merge_key not in item:
                raise RenderError(
                    f"{kind} {'.'.join(path)}: every patch item needs its merge key {merge_key}"
                )
            old = originals.get(item[merge_key])
            merged_list.append(copy.deepcopy(item) if old is None else strategic_merge(old, item, kind, path))
            if old is not None and (kind, path) in VOLUME_LISTS:
                _check_one_source(old, merged_list[-1], kind)
        patched = {item[merge_key] for item in patch}
        merged_list += [
            copy.deepcopy(item)
            for item in base
            if not isinstance(item, dict) or item.get(merge_key) not in patched
        ]
        return merged_list
    return copy.deepcopy(patch)


def volume_sources(volume: Resource) -> list[str]:
    """A pod volume's source keys (emptyDir, persistentVolumeClaim, ...): the API wants exactly one."""
    return sorted(set(volume) - {"name"})


def _check_one_source(old: Resource, merged: Resource, kind: str) -> None:
    sources = volume_sources(merged)
    if len(sources) > 1:
        stale = ", ".join(f"{key}: null" for key in volume_sources(old))
        raise RenderError(
            f"{kind} volume {merged['name']}: the patch leaves it with sources {sources}; kustomize "
            f"keeps both (no retainKeys), the API rejects that: add `{stale}` to the patch"
        )


def _apply_patch(resources: list[Resource], patch_file: Path) -> None:
    for patch in _load_yaml_documents(patch_file):
        _check_directives(patch, str(patch_file))
        targets = [
            i
            for i, res in enumerate(resources)
            if _key(res) == _key(patch) and _group(res["apiVersion"]) == _group(patch["apiVersion"])
        ]
        if len(targets) != 1:
            raise RenderError(f"{patch_file}: patch for {_key(patch)} matches {len(targets)} resources")
        resources[targets[0]] = strategic_merge(resources[targets[0]], patch, patch["kind"])


def _split_image(image: str) -> tuple[str, str | None, str | None]:
    """`registry:5000/name:tag@sha256:...` -> (name with registry, tag, digest)."""
    name, _, digest = image.partition("@")
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:
        return name[:colon], name[colon + 1 :], digest or None
    return name, None, digest or None


def _set_images(resources: list[Resource], images: list[dict[str, str]], where: Path) -> None:
    for rule in images:
        if set(rule) - IMAGE_KEYS or "name" not in rule:
            raise RenderError(f"{where}: images entries take only {sorted(IMAGE_KEYS)}, with a name")
    for res in resources:
        if res["kind"] not in POD_TEMPLATE_KINDS:
            continue
        pod = res.get("spec", {}).get("template", {}).get("spec", {})
        for container in [*pod.get("initContainers", []), *pod.get("containers", [])]:
            name, tag, digest = _split_image(container["image"])
            for rule in images:
                if rule["name"] != name:
                    continue
                name = rule.get("newName", name)
                if "digest" in rule:
                    tag, digest = None, rule["digest"]
                elif "newTag" in rule:
                    tag, digest = rule["newTag"], None
                container["image"] = name + (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")


def _legacy_order(res: Resource) -> tuple[int, str, str, str]:
    kind = res["kind"]
    group, _, version = res["apiVersion"].rpartition("/")
    rank = ORDER_FIRST.index(kind) if kind in ORDER_FIRST else len(ORDER_FIRST)
    if kind in ORDER_LAST:
        rank = len(ORDER_FIRST) + 1 + ORDER_LAST.index(kind)
    gvk = f"{group or '~G'}_{version}_{kind}"
    meta = res.get("metadata", {})
    return rank, gvk, meta.get("namespace", ""), meta.get("name", "")


def render(directory: str | Path) -> list[Resource]:
    """The resources that `kubectl kustomize DIRECTORY` prints, in its default order."""
    return sorted(_render(Path(directory)), key=_legacy_order)


def _render(directory: Path) -> list[Resource]:
    kfile = _kustomization_file(directory)
    spec = yaml.safe_load(kfile.read_text()) or {}
    unknown = set(spec) - KUSTOMIZATION_KEYS
    if unknown:
        raise RenderError(f"{kfile}: fields {sorted(unknown)} are not implemented by this renderer")
    resources: list[Resource] = []
    for entry in spec.get("resources", []):
        target = directory / entry
        resources += _render(target) if target.is_dir() else _load_yaml_documents(target)
    seen: set[tuple[str, str, str]] = set()
    for res in resources:
        ident = (_group(res["apiVersion"]), *_key(res))
        if ident in seen:
            raise RenderError(f"{kfile}: {ident} is declared twice")
        seen.add(ident)
    for entry in spec.get("patches", []):
        if set(entry) != {"path"}:
            raise RenderError(f"{kfile}: patches take only `path` here, got {sorted(entry)}")
        _apply_patch(resources, directory / entry["path"])
    if "namespace" in spec:
        for res in resources:
            res.setdefault("metadata", {})["namespace"] = spec["namespace"]
    _set_images(resources, spec.get("images", []), kfile)
    return resources


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("directory", type=Path, help="a directory holding a kustomization.yaml")
    args = parser.parse_args(argv)
    try:
        resources = render(args.directory)
    except (RenderError, OSError, yaml.YAMLError) as exc:
        print(f"{parser.prog}: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    yaml.safe_dump_all(resources, sys.stdout, sort_keys=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
