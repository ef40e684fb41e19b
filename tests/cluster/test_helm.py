"""The kimi-operator chart on the local control plane, with the real helm binary.

- install creates the CRD, RBAC and the operator Deployment; upgrades (a changed value, a chart version bump, even
  turning `crds.enabled` off) and uninstall keep the CRD and every KimiDeployment (helm.sh/resource-policy: keep);
- the chart's RBAC is enough: the operator, started with exactly the command line and environment of the chart's
  Deployment but authenticated as the chart's ServiceAccount (a TokenRequest token, not admin), takes a
  KimiDeployment to Ready - events, status patches, every child kind and the LeaderWorkerSet list/watch - and the
  ServiceAccount is refused what it must not do;
- a KimiDeployment applied server-side by a GitOps field manager shows no diff after the operator reconciled it;
- two operator processes with the chart's peering arguments: one works, the other stands by and takes over.

The cluster is shared by the session: the KimiDeployment CRD (installed by the `crd_installed` fixture) is adopted
by the release where a test installs it and is never deleted; cluster-scoped objects a test creates are removed.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from kimi_operator import kube
from kimi_testbed.procs import free_port
from kimi_testbed.wait import NotYet, wait_for

from .support import CHART, GROUP, PLURAL, ROOT, Kubectl, Release, kd, weights_pv

pytestmark = pytest.mark.cluster

CRD_NAME = f"{PLURAL}.{GROUP}"
GITOPS_MANAGER = "argocd-controller"
# A pinned commit, as GitOps repositories should have it: the operator needs no Hub to resolve it (the test
# cluster reaches none) and the simulated fetch Job reports none.
MODEL = {"repo": "moonshotai/Kimi-K2.5", "revision": "0123456789abcdef0123456789abcdef01234567"}
Manifest = dict[str, Any]


@pytest.fixture()
def adopted_crd(kubectl: Kubectl, crd_installed: None, release: Release) -> Iterator[None]:
    """Let the release take over the session's KimiDeployment CRD (Helm adopts objects carrying its ownership
    metadata), as on a cluster where someone ran `kubectl apply -f crds/` before `helm install`; restore after."""
    meta = [f"meta.helm.sh/release-name={release.name}", f"meta.helm.sh/release-namespace={release.namespace}"]
    kubectl.run("annotate", "--overwrite", "crd", CRD_NAME, *meta)
    kubectl.run("label", "--overwrite", "crd", CRD_NAME, "app.kubernetes.io/managed-by=Helm")
    try:
        yield
    finally:
        release.uninstall()
        kubectl.run("annotate", "crd", CRD_NAME, "meta.helm.sh/release-name-", "meta.helm.sh/release-namespace-")
        kubectl.run("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds"))


def _uid(obj: Manifest) -> str:
    return str(obj["metadata"]["uid"])


def test_install_upgrade_uninstall_never_delete_the_crd_or_kimideployments(
    release: Release, kubectl: Kubectl, adopted_crd: None, tmp_path: Path, namespace: str
) -> None:
    release.install("--set", "crds.enabled=true")
    crd = release.get("crd", CRD_NAME)
    assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert crd["metadata"]["labels"]["helm.sh/chart"] == "kimi-operator-0.1.0"
    for kind, name, ns in [
        ("clusterrole", release.fullname, None),
        ("clusterrolebinding", release.fullname, None),
        ("role", f"{release.fullname}-leader-election", namespace),
        ("rolebinding", f"{release.fullname}-leader-election", namespace),
        ("serviceaccount", release.fullname, namespace),
        ("service", f"{release.fullname}-metrics", namespace),
    ]:
        assert release.exists(kind, name, ns), f"{kind}/{name} not created"
    dep = release.deployment()
    assert dep["status"]["readyReplicas"] == 2
    kubectl.apply(
        {**kd("kept", topology={"accelerator": "H200"}), "metadata": {"name": "kept", "namespace": namespace}}
    )
    kd_uid = _uid(release.get("kd", "kept", namespace))

    # A chart version bump and a changed value.
    bumped = tmp_path / "kimi-operator"
    shutil.copytree(CHART, bumped)
    meta = bumped / "Chart.yaml"
    meta.write_text(meta.read_text().replace("version: 0.1.0", "version: 0.1.1"))
    release.upgrade("--reuse-values", "--set", "operator.resyncSeconds=30", chart=bumped)
    env = {e["name"]: e.get("value") for e in release.deployment()["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["KIMI_RESYNC_SECONDS"] == "30"
    crd_after = release.get("crd", CRD_NAME)
    assert _uid(crd_after) == _uid(crd) and crd_after["metadata"]["labels"]["helm.sh/chart"] == "kimi-operator-0.1.1"
    assert _uid(release.get("kd", "kept", namespace)) == kd_uid

    # The CRD leaves the rendered manifests: without the keep policy Helm would delete it here, and with it
    # every KimiDeployment in the cluster.
    release.upgrade("--reuse-values", "--set", "crds.enabled=false", chart=bumped)
    assert _uid(release.get("crd", CRD_NAME)) == _uid(crd)
    assert _uid(release.get("kd", "kept", namespace)) == kd_uid

    release.uninstall()
    assert _uid(release.get("crd", CRD_NAME)) == _uid(crd)
    assert _uid(release.get("kd", "kept", namespace)) == kd_uid
    for kind, name in [("clusterrole", release.fullname), ("clusterrolebinding", release.fullname)]:
        assert not release.exists(kind, name), f"{kind}/{name} left behind by helm uninstall"
    assert not release.exists("deployment", release.fullname, namespace)


# ------------------------------------------------------------------------------------------------ the real operator


def sa_kubeconfig(api: client.ApiClient, admin_kubeconfig: Path, namespace: str, account: str, out: Path) -> Path:
    """A kubeconfig that authenticates as the ServiceAccount with a short-lived TokenRequest token."""
    request = client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=3600))
    issued = client.CoreV1Api(api).create_namespaced_service_account_token(account, namespace, request).status
    assert issued is not None
    token = issued.token
    admin = yaml.safe_load(admin_kubeconfig.read_text())
    context = next(c for c in admin["contexts"] if c["name"] == admin["current-context"])["context"]
    cluster = next(c for c in admin["clusters"] if c["name"] == context["cluster"])["cluster"]
    if "certificate-authority" in cluster:
        cluster = {
            "server": cluster["server"],
            "certificate-authority-data": base64.b64encode(
                Path(cluster["certificate-authority"]).read_bytes()
            ).decode(),
        }
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "test", "cluster": cluster}],
        "users": [{"name": account, "user": {"token": token}}],
        "contexts": [{"name": account, "context": {"cluster": "test", "user": account, "namespace": namespace}}],
        "current-context": account,
    }
    out.write_text(yaml.safe_dump(config))
    return out


class ChartOperator:
    """`kimi-operator run` with the command line and environment of the chart's Deployment, as a local process.
    Only what cannot work outside a pod changes: the liveness/metrics ports (free local ones) and the identity."""

    def __init__(self, deployment: Manifest, kubeconfig: Path, log: Path, identity: str, namespace: str) -> None:
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        assert container["command"] == ["kimi-operator"], container["command"]
        self.metrics_port = free_port()
        self.args = [
            f"--liveness=http://127.0.0.1:{free_port()}/healthz" if a.startswith("--liveness=") else a
            for a in container["args"]
        ]
        self.env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
        # what the Downward API gives the pod: its name (the leader election identity) and namespace (the Lease's)
        self.env.update(KIMI_METRICS_PORT=str(self.metrics_port), POD_NAME=identity, POD_NAMESPACE=namespace)
        self.kubeconfig = kubeconfig
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {**os.environ, **self.env, "KUBECONFIG": str(self.kubeconfig), "PYTHONPATH": str(ROOT / "operator")}
        helped = subprocess.run(
            [sys.executable, "-m", "kimi_operator.cli", "run", "--help"], capture_output=True, text=True, env=env
        )
        for arg in self.args[1:]:
            flag = arg.split("=", 1)[0]
            assert flag in helped.stdout, f"the chart passes {flag} but `kimi-operator run` has no such option"
        with self.log.open("ab") as sink:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "kimi_operator.cli", *self.args],
                env=env,
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_for(self._up, timeout=60, what=f"the operator's /metrics on port {self.metrics_port}")

    def _up(self) -> bool | NotYet:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"the operator exited with {self.proc.returncode}:\n{self.tail()}")
        try:
            self.metrics()
        except OSError as err:
            return NotYet(err)
        return True

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as resp:
            return str(resp.read().decode())

    def sample(self, name: str, **labels: str) -> float:
        want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        total = 0.0
        for m in re.finditer(rf"^{name}\{{([^}}]*)\}} ([0-9.e+]+)$", self.metrics(), re.M):
            have = ",".join(sorted(m.group(1).split(",")))
            if not labels or have == want:
                total += float(m.group(2))
        return total

    def tail(self, lines: int = 30) -> str:
        """The last log lines, after every warning and error line."""
        if not self.log.exists():
            return ""
        text = self.log.read_text(errors="replace").splitlines()
        problems = [line for line in text if re.search(r"WARNING|ERROR|Traceback|failed", line)]
        return "\n".join([*problems[-20:], "...", *text[-lines:]])

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


@pytest.fixture()
def operators() -> Iterator[list[ChartOperator]]:
    started: list[ChartOperator] = []
    try:
        yield started
    finally:
        for op in started:
            op.stop()


def wait_ready(api: client.ApiClient, namespace: str, name: str, timeout: float = 120) -> Manifest:
    k = kube.Kube(api)

    def check() -> Manifest | NotYet:
        obj = k.get_kd(namespace, name)
        if obj is None:
            return NotYet("no KimiDeployment")
        generation = obj["metadata"].get("generation")
        for c in obj.get("status", {}).get("conditions", []):
            if c["type"] == "Ready" and c["status"] == "True" and c.get("observedGeneration") == generation:
                return obj
        return NotYet(obj.get("status", {}).get("conditions"))

    return wait_for(check, timeout=timeout, what=f"KimiDeployment {namespace}/{name} Ready")


@pytest.fixture()
def weights_volume(kubectl: Kubectl, namespace: str) -> Iterator[Callable[[str], None]]:
    """weights_volume(kd_name): a PV pre-bound to that KimiDeployment's weights claim; deleted after the test."""
    made: list[str] = []

    def make(kd_name: str) -> None:
        weights_pv(kubectl, namespace, f"{kd_name}-weights")
        made.append(f"{namespace}-{kd_name}-weights")

    try:
        yield make
    finally:
        for pv in made:
            kubectl.run("delete", "pv", pv, "--ignore-not-found", "--wait=false")


@pytest.mark.usefixtures("operator_paused")
def test_the_charts_service_account_is_enough_for_a_full_reconcile_and_gitops_sees_no_drift(
    cluster: Any,
    kube_api: client.ApiClient,
    kubectl: Kubectl,
    crd_installed: None,
    release: Release,
    operators: list[ChartOperator],
    weights_volume: Callable[[str], None],
    namespace: str,
    tmp_path: Path,
) -> None:
    weights_volume("served")
    release.install("--set", "crds.enabled=false", "--set", "operator.resyncSeconds=5")
    kubeconfig = sa_kubeconfig(kube_api, Path(cluster.kubeconfig), namespace, release.fullname, tmp_path / "sa")
    as_sa = Kubectl(kubectl.binary, kubeconfig)

    # What the ServiceAccount must not do.
    for verb, resource, scope in [
        ("list", "secrets", ["-A"]),
        ("list", "secrets", ["-n", namespace]),
        ("watch", "secrets", ["-n", namespace]),
        ("delete", "nodes", []),
        ("create", "pods", ["-n", namespace]),
        ("patch", "kimideployments.kimi-operator.dev", ["-n", namespace]),
        ("delete", "customresourcedefinitions", []),
        ("create", "clusterrolebindings", []),
    ]:
        answer = as_sa.run("auth", "can-i", verb, resource, *scope, check=False).stdout.strip()
        assert answer == "no", f"the operator's ServiceAccount may {verb} {resource} {' '.join(scope)}"
    refused = as_sa.run("get", "secrets", "-A", check=False)  # kubectl get without a name lists
    assert refused.returncode != 0 and "forbidden" in refused.stderr.lower()
    # one Secret by name: the API key's, for its fingerprint (rbac.readApiKeySecrets, default true)
    assert as_sa.run("auth", "can-i", "get", "secrets", "-n", namespace, check=False).stdout.strip() == "yes"

    op = ChartOperator(release.deployment(), kubeconfig, tmp_path / "operator.log", "chart-operator-0", namespace)
    operators.append(op)
    op.start()

    manifest = yaml.safe_dump(
        {
            **kd("served", model=MODEL, topology={"accelerator": "H200"}, replicas=2),
            "metadata": {"name": "served", "namespace": namespace},
        }
    )
    apply = ["apply", "--server-side", f"--field-manager={GITOPS_MANAGER}", "-f", "-"]
    kubectl.run(*apply, stdin=manifest)
    obj = wait_ready(kube_api, namespace, "served")
    assert obj["status"]["readyReplicas"] == 2

    k = kube.Kube(kube_api)

    def operator_events() -> set[str] | NotYet:
        # the operator posts its events after the status write that made the object Ready: wait, never sample
        reasons = {
            e["reason"]
            for e in k.list_of(kube.EVENTS, namespace, "")
            if e["involvedObject"].get("name") == "served" and e.get("reportingComponent") == kube.FIELD_MANAGER
        }
        return reasons if {"Downloading", "Ready"} <= reasons else NotYet(reasons)

    wait_for(operator_events, 30, "the operator's Downloading and Ready events on served")
    children = {(m["kind"], m["metadata"]["name"]) for m in k.list_children(namespace, "")[0].values()}
    assert {("Deployment", "served"), ("Service", "served"), ("PodDisruptionBudget", "served")} <= children

    assert op.sample("kimi_operator_reconciles_total", result="ok") > 0, op.tail()
    log = (tmp_path / "operator.log").read_text()
    assert f"reconcile {namespace}/served failed" not in log, op.tail()
    # Cluster-wide, it also meets other tests' KimiDeployments in namespaces being deleted; the API server refuses
    # new objects there (403, reason NamespaceTerminating). Every other refusal would be missing RBAC.
    denied = [
        line
        for line in log.splitlines()
        if re.search(r"[Ff]orbidden|status=403", line) and "NamespaceTerminating" not in line
    ]
    assert not denied, "the operator was refused something:\n" + "\n".join(denied[:5])
    metrics = op.metrics()
    for verb in ("PATCH", "POST"):  # server-side applies and status patches; events
        assert re.search(rf'^kimi_operator_api_writes_total\{{outcome="ok",verb="{verb}"\}} [1-9]', metrics, re.M)

    # GitOps: the same manifest, applied again by the same field manager, changes nothing; `kubectl diff` agrees.
    diff = kubectl.run(
        "diff", "--server-side", f"--field-manager={GITOPS_MANAGER}", "-f", "-", stdin=manifest, check=False
    )
    assert diff.returncode == 0 and diff.stdout == "", (
        f"drift after the operator reconciled:\n{diff.stdout}{diff.stderr}"
    )
    generation = obj["metadata"]["generation"]
    kubectl.run(*apply, stdin=manifest)
    assert k.get_kd(namespace, "served")["metadata"]["generation"] == generation  # type: ignore[index]
    fields = k.get_kd(namespace, "served")["metadata"]["managedFields"]  # type: ignore[index]
    spec_managers = {f["manager"] for f in fields if not f.get("subresource")}
    assert spec_managers == {GITOPS_MANAGER}, f"someone else owns fields of the object: {spec_managers}"


@pytest.mark.usefixtures("operator_paused")
def test_two_operator_replicas_one_works_a_frozen_one_never_comes_back_beside_the_other(
    cluster: Any,
    kube_api: client.ApiClient,
    kubectl: Kubectl,
    crd_installed: None,
    release: Release,
    operators: list[ChartOperator],
    weights_volume: Callable[[str], None],
    namespace: str,
    tmp_path: Path,
) -> None:
    """Issue 16, defect 2: with kopf peering a frozen replica came back active beside the new one for ~50 s. Now
    the chart's Lease: one works; SIGSTOP it, the other takes over; SIGCONT, and the woken one writes nothing; a
    graceful exit hands the Lease over at once. Both run with the chart's RBAC (its ServiceAccount's token)."""
    weights_volume("ha")
    release.install("--set", "crds.enabled=false", "--set", f"watchNamespaces={{{namespace}}}")
    kubeconfig = sa_kubeconfig(kube_api, Path(cluster.kubeconfig), namespace, release.fullname, tmp_path / "sa")
    args = (release.deployment(), kubeconfig)
    first = ChartOperator(*args, tmp_path / "first.log", "chart-operator-0", namespace)
    second = ChartOperator(*args, tmp_path / "second.log", "chart-operator-1", namespace)
    operators.extend([first, second])

    def holder() -> str:
        lease = kube.Kube(kube_api).get_lease(namespace, release.fullname) or {}
        return str((lease.get("spec") or {}).get("holderIdentity") or "")

    def writes(op: ChartOperator) -> float:
        return op.sample("kimi_operator_api_writes_total")

    first.start()
    wait_for(lambda: holder() == "chart-operator-0" or NotYet(holder()), 30, "the first replica to hold the Lease")
    second.start()
    kubectl.apply(
        {**kd("ha", model=MODEL, topology={"accelerator": "H200"}), "metadata": {"name": "ha", "namespace": namespace}}
    )
    wait_ready(kube_api, namespace, "ha")
    assert first.sample("kimi_operator_reconciles_total") > 0, first.tail()
    assert second.sample("kimi_operator_reconciles_total") == 0 and writes(second) == 0, second.tail()

    def replicas() -> int | None:
        dep = kube.Kube(kube_api).get(kube.CHILD_TYPES["Deployment"], namespace, "ha") or {}
        value = dep.get("spec", {}).get("replicas")
        return int(value) if value is not None else None

    # freeze the leader: the standby takes over once the Lease has gone unrenewed for its duration
    assert first.proc is not None
    first_writes = writes(first)  # idle and Ready: it writes nothing more as leader either (Lease renewals aside)
    os.killpg(first.proc.pid, signal.SIGSTOP)
    frozen_at = time.monotonic()
    try:
        kubectl.run("scale", "kd", "ha", "--replicas=2", "-n", namespace)
        wait_for(lambda: replicas() == 2 or NotYet(replicas()), 60, "the standby to take over and scale to 2")
        failover = time.monotonic() - frozen_at
        assert holder() == "chart-operator-1"
        before = writes(second)
    finally:
        os.killpg(first.proc.pid, signal.SIGCONT)
    woke_at = time.monotonic()
    # the woken replica sees the scale (its watch), yet writes nothing: a later edit is made by the leader alone
    kubectl.run("scale", "kd", "ha", "--replicas=1", "-n", namespace)
    wait_for(lambda: replicas() == 1 or NotYet(replicas()), 60, "the leader to scale back to 1")
    wait_for(
        lambda: "lost lease" in first.log.read_text(errors="replace") or NotYet(first.tail(5)),
        30,
        "the woken replica to say it stands by",
    )
    assert writes(first) == first_writes, "the woken replica wrote:\n" + first.tail()
    assert writes(second) > before
    print(
        f"[ha] failover after SIGSTOP: {failover:.1f}s (Lease 15 s); woken replica stood by "
        f"{time.monotonic() - woke_at:.1f}s with 0 writes",
        flush=True,
    )

    # a graceful exit releases the Lease: the other takes over at its next look
    stopped_at = time.monotonic()
    second.stop()
    wait_for(lambda: holder() == "chart-operator-0" or NotYet(holder()), 30, "the first replica to take the Lease")
    handover = time.monotonic() - stopped_at
    kubectl.run("scale", "kd", "ha", "--replicas=2", "-n", namespace)
    wait_for(lambda: replicas() == 2 or NotYet(replicas()), 60, "the new leader to scale to 2")
    wait_ready(kube_api, namespace, "ha")
    print(f"[ha] handover after a graceful exit: {handover:.1f}s", flush=True)
