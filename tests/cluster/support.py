"""Shared pieces of the operator's cluster tests: kubectl, the operator process, and an Env per test namespace."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client

from kimi_operator import kube
from kimi_testbed.operator_proc import OperatorProcess
from kimi_testbed.storage import prebound_pv
from kimi_testbed.wait import NotYet, wait_for

ROOT = Path(__file__).resolve().parents[2]
CRD = ROOT / "crds" / "kimi-operator.dev_kimideployments.yaml"
CHART = ROOT / "charts" / "kimi-operator"
Manifest = dict[str, Any]
GROUP, VERSION, PLURAL = "kimi-operator.dev", "v1alpha1", "kimideployments"


class Kubectl:
    def __init__(self, binary: Path, kubeconfig: Path) -> None:
        self.binary = binary
        self.kubeconfig = kubeconfig

    def run(self, *args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        out = subprocess.run(
            [str(self.binary), "--kubeconfig", str(self.kubeconfig), *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if check and out.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({out.returncode}):\n{out.stderr}")
        return out

    def apply(self, obj: dict[str, Any] | str, check: bool = True) -> subprocess.CompletedProcess[str]:
        text = obj if isinstance(obj, str) else yaml.safe_dump(obj)
        return self.run("apply", "--server-side", "--field-manager=test-user", "-f", "-", stdin=text, check=check)


def kd(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "KimiDeployment",
        "metadata": {"name": name},
        "spec": spec,
    }


def in_ns(obj: dict[str, Any], namespace: str) -> dict[str, Any]:
    return {**obj, "metadata": {**obj["metadata"], "namespace": namespace}}


def weights_pv(kubectl: Kubectl, namespace: str, claim: str) -> None:
    """A PV pre-bound to the claim the operator will create (the test cluster has no storage provisioner)."""
    kubectl.apply(prebound_pv(namespace, claim))


TYPES = {**kube.CHILD_TYPES, "Pod": kube.PODS, "Event": kube.EVENTS, "KimiDeployment": kube.KD}


class Env:
    """One test namespace: reads as plain dicts (the operator's own kube.Kube), writes as a user would (kubectl)."""

    def __init__(self, api: client.ApiClient, namespace: str, kubectl: Kubectl, op: OperatorProcess) -> None:
        self.ns = namespace
        self.kubectl = kubectl
        self.op = op
        self.kube = kube.Kube(api)

    def apply(self, obj: dict[str, Any], check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.kubectl.apply(in_ns(obj, self.ns), check=check)

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.kubectl.run(*args, "-n", self.ns)

    def get(self, name: str) -> dict[str, Any]:
        obj = self.kube.get_kd(self.ns, name)
        assert obj is not None, f"KimiDeployment {self.ns}/{name} not found"
        return obj

    def read(self, kind: str, name: str) -> dict[str, Any]:
        obj = self.kube.get(TYPES[kind], self.ns, name)
        assert obj is not None, f"{kind} {self.ns}/{name} not found"
        return obj

    def items(self, kind: str, selector: str = "") -> list[dict[str, Any]]:
        return self.kube.list_of(TYPES[kind], self.ns, selector)

    def names(self, kind: str) -> set[str]:
        return {i["metadata"]["name"] for i in self.items(kind)}

    def condition(self, name: str, ctype: str) -> dict[str, Any] | None:
        for c in self.get(name).get("status", {}).get("conditions", []):
            if c["type"] == ctype:
                return dict(c)
        return None

    def wait_condition(
        self, name: str, ctype: str, status: str, reason: str | None = None, timeout: float = 60
    ) -> dict[str, Any]:
        """Wait for a condition computed for the KimiDeployment's current generation."""

        def check() -> dict[str, Any] | NotYet:
            obj = self.get(name)
            generation = obj["metadata"].get("generation")
            for c in obj.get("status", {}).get("conditions", []):
                if c["type"] != ctype or c.get("observedGeneration") != generation:
                    continue
                if c["status"] == status and (reason is None or c["reason"] == reason):
                    return dict(c)
            return NotYet({"generation": generation, "conditions": obj.get("status", {}).get("conditions")})

        return wait_for(
            check, timeout=timeout, what=f"KimiDeployment {self.ns}/{name} {ctype}={status} (reason {reason})"
        )

    def events(self, name: str) -> list[tuple[str, str]]:
        return [
            (e.get("type", ""), e.get("reason", ""))
            for e in self.items("Event")
            if e["involvedObject"].get("kind") == "KimiDeployment" and e["involvedObject"].get("name") == name
        ]

    def wait_event(self, name: str, etype: str, reason: str, timeout: float = 30) -> None:
        """Wait for an Event on the KimiDeployment: the operator records Events after its status write, so a test
        that has just seen a condition may be ahead of the Event that goes with it."""

        def check() -> bool | NotYet:
            seen = self.events(name)
            return (etype, reason) in seen or NotYet(seen)

        wait_for(check, timeout=timeout, what=f"a {etype} {reason} Event on KimiDeployment {self.ns}/{name}")


def container(pod_spec: dict[str, Any]) -> dict[str, Any]:
    """The engine container of a PodSpec."""
    c: dict[str, Any] = pod_spec["containers"][0]
    return c


def flag(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def go_ready(env: Env, name: str, **spec: Any) -> None:
    weights_pv(env.kubectl, env.ns, f"{name}-weights")
    env.apply(kd(name, **spec))
    env.wait_condition(name, "Ready", "True", "Ready", timeout=120)


class Helm:
    def __init__(self, binary: Path, kubeconfig: Path, namespace: str) -> None:
        self.binary = binary
        self.kubeconfig = kubeconfig
        self.namespace = namespace

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        argv = [str(self.binary), "--kubeconfig", str(self.kubeconfig), "--namespace", self.namespace, *args]
        out = subprocess.run(argv, capture_output=True, text=True, timeout=150)
        if check and out.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
        return out


class Release:
    """One release of the chart in the test's namespace; uninstalled (and its cluster-scoped leftovers checked
    away) at the end of the test."""

    def __init__(self, helm: Helm, kubectl: Kubectl, namespace: str) -> None:
        self.helm = helm
        self.kubectl = kubectl
        self.namespace = namespace
        self.name = "k" + namespace.rsplit("-", 1)[-1]  # unique per test: cluster-scoped names derive from it
        self.fullname = f"{self.name}-kimi-operator"
        self.installed = False

    def exists(self, kind: str, name: str, namespace: str | None = None) -> bool:
        args = ["get", kind, name, "--ignore-not-found", "-o", "name"]
        out = self.kubectl.run(*args, *(["-n", namespace] if namespace else []))
        return bool(out.stdout.strip())

    def get(self, kind: str, name: str, namespace: str | None = None) -> Manifest:
        out = self.kubectl.run("get", kind, name, "-o", "yaml", *(["-n", namespace] if namespace else []))
        obj: Manifest = yaml.safe_load(out.stdout)
        return obj

    def install(self, *values: str, chart: Path = CHART) -> None:
        self.helm.run("install", self.name, str(chart), "--wait", "--timeout", "120s", *values)
        self.installed = True

    def upgrade(self, *values: str, chart: Path = CHART) -> subprocess.CompletedProcess[str]:
        return self.helm.run("upgrade", self.name, str(chart), "--wait", "--timeout", "120s", *values)

    def uninstall(self) -> None:
        if self.installed:
            self.helm.run("uninstall", self.name, "--wait", "--timeout", "120s")
            self.installed = False

    def deployment(self) -> Manifest:
        return self.get("deployment", self.fullname, self.namespace)

    def cleanup(self) -> None:
        self.uninstall()
