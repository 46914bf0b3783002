"""Validate the kustomize overlays offline: render each, check every object and how they fit together.

    python deploy/validate_manifests.py                         # every overlay under deploy/k8s/overlays
    python deploy/validate_manifests.py deploy/k8s/overlays/gpu

- Schemas: each object against the Kubernetes schemas that kubernetes-validate ships (no network), in
  strict mode (an unknown field, such as a misspelt probe, is an error), for the oldest Kubernetes we
  support and the newest the package knows. The ServiceMonitor is a CRD those schemas lack: it is
  checked against CRD_SCHEMAS, which covers exactly the fields we set, just as strictly.
- Consistency, which no schema sees: selectors select the pods, ports and volumes referred to exist, each
  volume has one source, one Service is scraped, the HPA targets the Deployment (which leaves `replicas`
  to it), one namespace.

Exit status: 0 all valid, 1 problems found (listed), 2 an overlay could not be rendered.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml
from kubernetes_validate.utils import SchemaNotFoundError, latest_version

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kustomize_render import RenderError, render, volume_sources  # noqa: E402

OVERLAYS = Path(__file__).resolve().parent / "k8s" / "overlays"
K8S_VERSIONS = ("1.30", latest_version())

_LABELS = {"type": "object", "additionalProperties": {"type": "string"}}
_DURATION = {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"}
SERVICE_MONITOR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {
            "type": "object",
            "required": ["name"],
            "additionalProperties": False,
            "properties": {"name": {"type": "string"}, "namespace": {"type": "string"}, "labels": _LABELS},
        },
        "spec": {
            "type": "object",
            "required": ["selector", "endpoints"],
            "additionalProperties": False,
            "properties": {
                "selector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {"matchLabels": _LABELS},
                },
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["port"],
                        "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string", "pattern": "^/"},
                            "interval": _DURATION,
                            "scrapeTimeout": _DURATION,
                        },
                    },
                },
            },
        },
    },
}
CRD_SCHEMAS = {("monitoring.coreos.com/v1", "ServiceMonitor"): SERVICE_MONITOR_SCHEMA}


def _name(obj: dict[str, Any]) -> str:
    return f"{obj['kind']}/{obj['metadata']['name']}"


def schema_problems(objects: Sequence[dict[str, Any]], version: str) -> list[str]:
    problems = []
    for obj in objects:
        crd_schema = CRD_SCHEMAS.get((obj["apiVersion"], obj["kind"]))
        try:
            if crd_schema is not None:
                jsonschema.validate(obj, crd_schema)
            else:
                kubernetes_validate.validate(obj, version, strict=True)
        except SchemaNotFoundError:
            problems.append(f"{_name(obj)}: no schema for {obj['apiVersion']} in Kubernetes {version}")
        except jsonschema.ValidationError as exc:
            where = ".".join(map(str, exc.path)) or "(top)"
            problems.append(f"{_name(obj)}: invalid for Kubernetes {version} at {where}: {exc.message}")
    return problems


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def consistency_problems(objects: Sequence[dict[str, Any]]) -> list[str]:
    problems: list[str] = []

    def check(ok: bool, message: str) -> None:
        if not ok:
            problems.append(message)

    deployments = [o for o in objects if o["kind"] == "Deployment"]
    if len(deployments) != 1:
        return [f"expected one Deployment, found {len(deployments)}"]
    deployment = deployments[0]
    template = deployment["spec"]["template"]
    pod, pod_labels = template["spec"], template["metadata"].get("labels", {})
    check(_selects(deployment["spec"]["selector"]["matchLabels"], pod_labels), "Deployment selects no pod")
    port_names = {p.get("name") for c in pod["containers"] for p in c.get("ports", [])}
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    claims = {o["metadata"]["name"] for o in objects if o["kind"] == "PersistentVolumeClaim"}
    for container in pod["containers"]:
        for mount in container.get("volumeMounts", []):
            check(mount["name"] in volumes, f"container {container['name']}: no volume {mount['name']}")
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            port = container.get(probe, {}).get("httpGet", {}).get("port")
            check(port is None or port in port_names, f"{probe} port {port} is not a container port")
    for volume in volumes.values():
        sources = volume_sources(volume)
        check(len(sources) == 1, f"volume {volume['name']}: {len(sources)} sources {sources}, not one")
        claim = volume.get("persistentVolumeClaim", {}).get("claimName")
        check(claim is None or claim in claims, f"volume {volume['name']}: no PersistentVolumeClaim {claim}")

    services = [o for o in objects if o["kind"] == "Service"]
    for service in services:
        check(_selects(service["spec"].get("selector", {}), pod_labels), f"{_name(service)} selects no pod")
        for port in service["spec"]["ports"]:
            check(
                port.get("targetPort") in port_names,
                f"{_name(service)}: no container port {port.get('targetPort')}",
            )
    for pdb in (o for o in objects if o["kind"] == "PodDisruptionBudget"):
        check(_selects(pdb["spec"]["selector"]["matchLabels"], pod_labels), f"{_name(pdb)} selects no pod")
    for monitor in (o for o in objects if o["kind"] == "ServiceMonitor"):
        selector = monitor["spec"]["selector"]["matchLabels"]
        scraped = [s for s in services if _selects(selector, s["metadata"].get("labels", {}))]
        check(len(scraped) == 1, f"{_name(monitor)} scrapes {len(scraped)} Services (one, or samples double)")
        names = {p["name"] for s in scraped for p in s["spec"]["ports"]}
        for endpoint in monitor["spec"]["endpoints"]:
            check(endpoint["port"] in names, f"{_name(monitor)}: no Service port {endpoint['port']}")
    for hpa in (o for o in objects if o["kind"] == "HorizontalPodAutoscaler"):
        target = hpa["spec"]["scaleTargetRef"]
        ok = (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
        check(ok, f"{_name(hpa)} does not target the Deployment")
        check(
            "replicas" not in deployment["spec"], "Deployment sets replicas: every apply would undo the HPA"
        )
    namespaces = {o["metadata"].get("namespace") for o in objects}
    check(len(namespaces) == 1 and None not in namespaces, f"objects in namespaces {namespaces}")
    return problems


def overlay_problems(overlay: Path) -> list[str]:
    objects = render(overlay)
    problems = [p for version in K8S_VERSIONS for p in schema_problems(objects, version)]
    return sorted(set(problems)) + consistency_problems(objects)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "overlays", nargs="*", type=Path, help="kustomization directories (default: every overlay)"
    )
    overlays = parser.parse_args(argv).overlays or sorted(p for p in OVERLAYS.iterdir() if p.is_dir())
    status = 0
    for overlay in overlays:
        try:
            problems = overlay_problems(overlay)
        except (RenderError, OSError, yaml.YAMLError) as exc:
            print(f"{overlay}: cannot render: {' '.join(str(exc).split())}", file=sys.stderr)
            status = 2
            continue
        status = max(status, 1 if problems else 0)
        print(f"{overlay}: {'ok' if not problems else f'{len(problems)} problem(s)'}")
        for problem in problems:
            print(f"  {problem}")
    return status


if __name__ == "__main__":
    sys.exit(main())
