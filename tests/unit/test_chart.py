"""The Helm charts, rendered by the real helm binary (built by `make bins`): lint, golden output, the values schema,
the CRD template in step with the generator, least-privilege RBAC and a hardened operator pod.

Regenerate the golden files after an intended change with `UPDATE_GOLDEN=1 make unit` and review the diff.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

import chart_crds
from kimi_operator.catalog import SGLANG_IMAGE
from kimi_testbed.bins import find_bin_dir

ROOT = Path(__file__).resolve().parents[2]
OPERATOR_CHART = ROOT / "charts" / "kimi-operator"
DEPLOYMENTS_CHART = ROOT / "charts" / "kimi-deployments"
GOLDEN = ROOT / "tests" / "golden" / "chart"
KUBE_VERSION = "1.36.3"  # helm's built-in default (from its client-go) is older than the chart's kubeVersion
Manifest = dict[str, Any]


@pytest.fixture(scope="module")
def helm() -> Path:
    return find_bin_dir() / "helm"  # raises with the command that builds it: never a skip


def run_helm(helm: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    out = subprocess.run([str(helm), *args], capture_output=True, text=True, timeout=60)
    if check and out.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    return out


def template(helm: Path, chart: Path, *args: str, release: str = "kimi", namespace: str = "kimi-system") -> str:
    return run_helm(
        helm, "template", release, str(chart), "--namespace", namespace, "--kube-version", KUBE_VERSION, *args
    ).stdout


def docs(text: str) -> list[Manifest]:
    return [d for d in yaml.safe_load_all(text) if d]


def by_kind(text: str) -> dict[str, list[Manifest]]:
    out: dict[str, list[Manifest]] = {}
    for d in docs(text):
        out.setdefault(d["kind"], []).append(d)
    return out


# ------------------------------------------------------------------------------------------------ lint, golden


@pytest.mark.parametrize("chart", [OPERATOR_CHART, DEPLOYMENTS_CHART], ids=lambda p: p.name)
def test_charts_pass_helm_lint_strict(helm: Path, chart: Path) -> None:
    out = run_helm(helm, "lint", "--strict", str(chart), "--kube-version", KUBE_VERSION)
    assert "1 chart(s) linted, 0 chart(s) failed" in out.stdout


GOLDEN_CASES: dict[str, tuple[Path, list[str]]] = {
    "kimi-operator.default": (OPERATOR_CHART, []),
    "kimi-operator.namespaced": (
        OPERATOR_CHART,
        ["--set", "watchNamespaces={team-a,team-b}", "--set", "replicaCount=1", "--set", "crds.enabled=false"],
    ),
    "kimi-operator.servicemonitor": (
        OPERATOR_CHART,
        [
            "--api-versions",
            "monitoring.coreos.com/v1/ServiceMonitor",
            "--set",
            "metrics.serviceMonitor.enabled=true",
            "--set",
            "image.digest=sha256:" + "0" * 64,
            "--set",
            "operator.engineImage=registry.example.com/sglang:v0.5.23",
            "--set",
            "operator.hfEndpoint=https://hf-mirror.example.com",
        ],
    ),
    "kimi-deployments.example": (DEPLOYMENTS_CHART, ["-f", str(GOLDEN / "kimi-deployments.values.yaml")]),
}


@pytest.mark.parametrize("case", sorted(GOLDEN_CASES))
def test_helm_template_matches_golden(helm: Path, case: str) -> None:
    chart, args = GOLDEN_CASES[case]
    text = template(helm, chart, *args)
    golden = GOLDEN / f"{case}.yaml"
    if os.environ.get("UPDATE_GOLDEN") == "1":
        golden.write_text(text)
    assert golden.exists(), f"missing {golden}; run UPDATE_GOLDEN=1 make unit"
    assert text == golden.read_text(), f"{golden.name} differs from the chart; review, then UPDATE_GOLDEN=1"


def test_kimi_operator_chart_renders_one_of_each_part(helm: Path) -> None:
    kinds = {k: len(v) for k, v in by_kind(template(helm, OPERATOR_CHART)).items()}
    assert kinds == {
        "CustomResourceDefinition": 1,
        "ServiceAccount": 1,
        "ClusterRole": 1,
        "ClusterRoleBinding": 1,
        "Deployment": 1,
        "Service": 1,
        "PodDisruptionBudget": 1,
        "Role": 1,  # the leader election Lease, in the release namespace
        "RoleBinding": 1,
        "Pod": 1,  # the helm test hook
    }


# ------------------------------------------------------------------------------------------------ values schema


@pytest.mark.parametrize(
    ("chart", "values", "complaint"),
    [
        (OPERATOR_CHART, "replicaCont: 2", "additional properties 'replicaCont' not allowed"),
        (OPERATOR_CHART, "operator: {resyncSecond: 5}", "additional properties 'resyncSecond' not allowed"),
        (OPERATOR_CHART, "metrics: {serviceMonitor: {enable: true}}", "additional properties 'enable' not allowed"),
        (OPERATOR_CHART, "image: {pullPolicy: Sometimes}", "pullPolicy"),
        (OPERATOR_CHART, "watchNamespaces: [Team_A]", "watchNamespaces"),
        (DEPLOYMENTS_CHART, "deployments: [{name: a, spec: {replicaz: 1}}]", "'replicaz' not allowed"),
        (
            DEPLOYMENTS_CHART,
            "deployments: [{name: a, spec: {topology: {accelerator: TPU}}}]",
            "/deployments/0/spec/topology/accelerator",
        ),
        (DEPLOYMENTS_CHART, "deployments: [{spec: {}}]", "missing property 'name'"),
        (DEPLOYMENTS_CHART, "deploymnts: []", "additional properties 'deploymnts' not allowed"),
    ],
)
def test_values_schema_rejects_typos_and_bad_values(
    helm: Path, tmp_path: Path, chart: Path, values: str, complaint: str
) -> None:
    path = tmp_path / "values.yaml"
    path.write_text(values + "\n")
    out = run_helm(helm, "template", "x", str(chart), "-f", str(path), "--kube-version", KUBE_VERSION, check=False)
    assert out.returncode != 0, f"helm accepted {values!r}"
    assert complaint in out.stderr, out.stderr


def test_every_value_has_a_doc_comment_and_a_schema_entry() -> None:
    """helm-docs style: each leaf (or empty map/list) of values.yaml is preceded by a `# --` comment."""
    for chart in (OPERATOR_CHART, DEPLOYMENTS_CHART):
        lines = (chart / "values.yaml").read_text().splitlines()
        values = yaml.safe_load("\n".join(lines))
        schema = json.loads((chart / "values.schema.json").read_text())
        for path in _leaf_paths(values):
            line = _line_of(lines, path)
            assert _has_doc_comment(lines, line), f"{chart.name}: {'.'.join(path)} has no '# --' comment"
            node = schema
            for key in path:
                assert key in node.get("properties", {}), f"{chart.name}: {'.'.join(path)} missing in the schema"
                node = node["properties"][key]


def _leaf_paths(node: Any, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    if (
        isinstance(node, dict)
        and node
        and prefix not in {("resources",), ("podSecurityContext",), ("securityContext",)}
    ):
        for key, value in node.items():
            yield from _leaf_paths(value, (*prefix, key))
    else:
        yield prefix


def _line_of(lines: list[str], path: tuple[str, ...]) -> int:
    start = 0
    for depth, key in enumerate(path):
        pattern = re.compile(rf"^{'  ' * depth}{re.escape(key)}:")
        start = next(i for i in range(start, len(lines)) if pattern.match(lines[i]))
    return start


def _has_doc_comment(lines: list[str], index: int) -> bool:
    i = index - 1
    while i >= 0 and lines[i].lstrip().startswith("#"):
        if lines[i].lstrip().startswith("# --"):
            return True
        i -= 1
    return False


# ------------------------------------------------------------------------------------------------ CRDs


def test_chart_crd_template_and_deployments_schema_match_the_generator() -> None:
    stale = chart_crds.stale()
    assert not stale, f"{[str(p.relative_to(ROOT)) for p in stale]} drifted from the models: run `make chart-crds`"


def test_chart_crd_is_the_generated_crd_kept_on_upgrade_and_uninstall(helm: Path) -> None:
    crd = by_kind(template(helm, OPERATOR_CHART))["CustomResourceDefinition"][0]
    generated = yaml.safe_load((ROOT / "crds" / "kimi-operator.dev_kimideployments.yaml").read_text())
    assert crd["spec"] == generated["spec"]
    assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert crd["metadata"]["annotations"]["argocd.argoproj.io/sync-options"] == "Prune=false,Delete=false"
    off = by_kind(template(helm, OPERATOR_CHART, "--set", "crds.enabled=false"))
    assert "CustomResourceDefinition" not in off


def test_no_crd_but_the_kimideployment_one_ships(helm: Path) -> None:
    """Leader election uses a core Lease: no kopf.dev peering CRDs to install (or to leave behind)."""
    assert not (OPERATOR_CHART / "crds").exists() or not list((OPERATOR_CHART / "crds").iterdir())
    shown = by_kind(template(helm, OPERATOR_CHART, "--include-crds"))
    assert [c["spec"]["names"]["kind"] for c in shown["CustomResourceDefinition"]] == ["KimiDeployment"]


# ------------------------------------------------------------------------------------------------ RBAC


def test_secrets_are_out_of_reach_when_key_rotation_is_off(helm: Path) -> None:
    kinds = by_kind(template(helm, OPERATOR_CHART, "--set", "rbac.readApiKeySecrets=false"))
    rules = _rules(kinds.get("ClusterRole", []) + kinds.get("Role", []))
    assert not any("secrets" in r["resources"] for r in rules)
    (dep,) = kinds["Deployment"]
    env = {e["name"]: e.get("value") for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["KIMI_API_KEY_ROTATION"] == "false"
    (dep,) = by_kind(template(helm, OPERATOR_CHART))["Deployment"]
    env = {e["name"]: e.get("value") for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["KIMI_API_KEY_ROTATION"] == "true" and "KIMI_GATEWAY_IMAGE" not in env


def _rules(objs: list[Manifest]) -> list[Manifest]:
    return [r for o in objs for r in o["rules"]]


@pytest.mark.parametrize("mode", ["cluster", "namespaced"])
def test_rbac_has_no_wildcards_and_grants_exactly_what_the_operator_uses(helm: Path, mode: str) -> None:
    args = ["--set", "watchNamespaces={team-a}"] if mode == "namespaced" else []
    kinds = by_kind(template(helm, OPERATOR_CHART, *args))
    rules = _rules(kinds.get("ClusterRole", []) + kinds.get("Role", []))
    for rule in rules:
        for field in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule[field], rule
        assert "nonResourceURLs" not in rule
    granted = {(g, res, v) for r in rules for g in r["apiGroups"] for res in r["resources"] for v in r["verbs"]}
    writes = {"create", "patch", "delete"}
    for group, resource in [
        ("", "services"),
        ("", "persistentvolumeclaims"),
        ("apps", "deployments"),
        ("batch", "jobs"),
        ("policy", "poddisruptionbudgets"),
        ("leaderworkerset.x-k8s.io", "leaderworkersets"),
    ]:
        assert {(group, resource, v) for v in {"get", "list", "watch"} | writes} <= granted
    # The gateway's ServiceAccount, Role and RoleBinding, the engines' NetworkPolicy: watched (the read cache) and
    # applied, never read one by one; the Role grants pods get/list/watch, which the operator holds: no bind/escalate.
    for group, resource in [
        ("", "serviceaccounts"),
        ("rbac.authorization.k8s.io", "roles"),
        ("rbac.authorization.k8s.io", "rolebindings"),
        ("networking.k8s.io", "networkpolicies"),
    ]:
        assert {v for g, res, v in granted if (g, res) == (group, resource)} == {"list", "watch"} | writes
    assert not {v for g, res, v in granted if res in ("roles", "rolebindings", "clusterroles")} & {"bind", "escalate"}
    assert not any(res in ("clusterroles", "clusterrolebindings") for _, res, _ in granted)
    assert {("kimi-operator.dev", "kimideployments", v) for v in ("get", "list", "watch")} <= granted
    assert ("kimi-operator.dev", "kimideployments/status", "patch") in granted
    assert not {v for g, res, v in granted if res == "kimideployments"} & writes, "the operator never edits a spec"
    assert {v for g, res, v in granted if res == "pods"} == {"get", "list", "watch"}
    # the fetch pod's progress is in its log; the fetch pod itself has no API access
    assert {(g, v) for g, res, v in granted if res == "pods/log"} == {("", "get")}
    assert {v for g, res, v in granted if res == "events"} == {"create", "list"}  # list: the PVC's events
    # the API key's Secret, got by name for its fingerprint (a new key rolls the pods): never listed or watched
    assert {(g, v) for g, res, v in granted if res == "secrets"} == {("", "get")}
    assert not any(res == "configmaps" for _, res, _ in granted)
    # Engine pods' CPU/memory requests are sized from the smallest node with the planned GPUs: read-only, list only.
    assert {(g, v) for g, res, v in granted if res == "nodes"} == {("", "list")}
    assert not any(g == "kopf.dev" for g, _, _ in granted), "no kopf peering: leader election is a Lease"
    # the Lease, in the release namespace only: create (RBAC cannot name an object before it exists), get and
    # update of that one name
    (lease_role,) = [r for r in kinds["Role"] if r["metadata"]["name"].endswith("-leader-election")]
    assert lease_role["metadata"]["namespace"] == "kimi-system"
    assert lease_role["rules"] == [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
        {
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "resourceNames": ["kimi-kimi-operator"],
            "verbs": ["get", "update"],
        },
    ]
    assert not {v for g, res, v in granted if res == "leases"} - {"create", "get", "update"}
    if mode == "namespaced":
        (cluster_role,) = kinds["ClusterRole"]
        cluster_resources = {res for r in cluster_role["rules"] for res in r["resources"]}
        assert cluster_resources == {"customresourcedefinitions", "namespaces", "nodes"}
        assert {r["metadata"]["namespace"] for r in kinds["Role"]} == {"team-a", "kimi-system"}


# ------------------------------------------------------------------------------------------------ the operator pod


def test_operator_pod_is_hardened_probed_and_configured(helm: Path) -> None:
    (dep,) = by_kind(template(helm, OPERATOR_CHART))["Deployment"]
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert dep["spec"]["replicas"] == 2
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert c["resources"]["requests"] and c["resources"]["limits"]
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "healthz"}
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"metrics": 8080, "healthz": 8081}
    assert c["command"] == ["kimi-operator"]
    assert c["args"][:2] == ["run", "--liveness=http://0.0.0.0:8081/healthz"]
    assert "--leader-election-lease=kimi-kimi-operator" in c["args"]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["KIMI_OPERATOR_IMAGE"] == c["image"] == "ghcr.io/kimi-operator/kimi-operator:0.1.0"
    assert env["KIMI_METRICS_PORT"] == "8080" and env["KIMI_RESYNC_SECONDS"] == "60" and env["KIMI_WORKERS"] == "4"
    fields = {e["name"]: e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") for e in c["env"]}
    assert fields["POD_NAME"] == "metadata.name" and fields["POD_NAMESPACE"] == "metadata.namespace"


def test_namespaces_and_kopf_args_reach_the_command_line(helm: Path) -> None:
    text = template(
        helm,
        OPERATOR_CHART,
        "--set",
        "watchNamespaces={a,b}",
        "--set",
        "operator.kopfArgs={--verbose}",
        "--set",
        "leaderElection.enabled=false",
        "--set",
        "replicaCount=1",
    )
    (dep,) = by_kind(text)["Deployment"]
    args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args == ["run", "--liveness=http://0.0.0.0:8081/healthz", "--namespace=a", "--namespace=b", "--verbose"]
    assert not [r for r in by_kind(text).get("Role", []) if r["metadata"]["name"].endswith("-leader-election")]


def test_more_than_one_replica_without_leader_election_is_refused(helm: Path) -> None:
    out = run_helm(
        helm,
        "template",
        "x",
        str(OPERATOR_CHART),
        "--kube-version",
        KUBE_VERSION,
        "--set",
        "leaderElection.enabled=false",
        check=False,
    )
    assert out.returncode != 0 and "replicaCount > 1 needs leaderElection.enabled=true" in out.stderr


def test_servicemonitor_only_where_the_cluster_serves_it(helm: Path) -> None:
    on = ["--set", "metrics.serviceMonitor.enabled=true"]
    assert "ServiceMonitor" not in by_kind(template(helm, OPERATOR_CHART, *on))
    with_api = template(helm, OPERATOR_CHART, *on, "--api-versions", "monitoring.coreos.com/v1/ServiceMonitor")
    (sm,) = by_kind(with_api)["ServiceMonitor"]
    assert sm["spec"]["endpoints"][0]["port"] == "metrics"


def test_helm_test_pod_is_a_hook_and_not_a_metrics_endpoint(helm: Path) -> None:
    kinds = by_kind(template(helm, OPERATOR_CHART))
    (pod,) = kinds["Pod"]
    (svc,) = kinds["Service"]
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    labels = pod["metadata"]["labels"]
    assert not all(labels.get(k) == v for k, v in svc["spec"]["selector"].items())


def test_notes_say_what_to_apply_next(helm: Path, tmp_path: Path) -> None:
    # `helm template` skips NOTES.txt: render it inside a ConfigMap of a copy of the chart.
    chart = tmp_path / "kimi-operator"
    shutil.copytree(OPERATOR_CHART, chart)
    notes = (chart / "templates" / "NOTES.txt").read_text()
    (chart / "templates" / "_notes.tpl").write_text('{{- define "test.notes" -}}\n' + notes + "{{- end }}\n")
    (chart / "templates" / "notes.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: notes}\ndata:\n  notes: |\n"
        '    {{- include "test.notes" . | nindent 4 }}\n'
    )
    (rendered,) = docs(template(helm, chart, "--show-only", "templates/notes.yaml"))
    text = rendered["data"]["notes"]
    assert "kind: KimiDeployment" in text and "kubectl get kd -w" in text and "helm test kimi -n kimi-system" in text


# ------------------------------------------------------------------------------------------------ kimi-deployments


def test_kimi_deployments_merge_defaults_without_losing_false_or_zero(helm: Path) -> None:
    kds = docs(template(helm, DEPLOYMENTS_CHART, "-f", str(GOLDEN / "kimi-deployments.values.yaml")))
    spec = {d["metadata"]["name"]: d["spec"] for d in kds}
    assert spec["kimi-k25"]["topology"] == {"accelerator": "H200", "nodeSelector": {"pool": "gpu"}}
    assert spec["kimi-k25-canary"]["replicas"] == 0  # the entry's 0 beats the default 1
    assert spec["kimi-k25-canary"]["weights"]["retainOnDelete"] is False
    assert {d["metadata"]["namespace"] for d in kds} == {"kimi-system", "research"}


def test_kimi_deployments_refuse_a_duplicate_name(helm: Path, tmp_path: Path) -> None:
    path = tmp_path / "v.yaml"
    path.write_text("deployments: [{name: a}, {name: a}]\n")
    out = run_helm(
        helm, "template", "x", str(DEPLOYMENTS_CHART), "-f", str(path), "--kube-version", KUBE_VERSION, check=False
    )
    assert out.returncode != 0 and "appears twice" in out.stderr


def test_engine_image_default_is_named_in_values_docs() -> None:
    assert SGLANG_IMAGE in (ROOT / "images" / "README.md").read_text()
