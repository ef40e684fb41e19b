"""The supervisor: one detached process per cluster that owns every control-plane process.

``python -m kimi_testbed.supervisor CLUSTER_DIR`` reads ``spec.json``, starts etcd, kube-apiserver,
kube-controller-manager, kube-scheduler, kwok and the LeaderWorkerSet controller on free loopback ports, installs
the LWS CRDs and webhooks, creates the simulated nodes, and records progress in ``state.json`` (phase starting ->
ready, or failed with the reason and the tail of the failing component's log). Its children get PR_SET_PDEATHSIG,
so they die with it whatever kills it. It stops everything on SIGTERM/SIGINT/SIGHUP, when the optional owner
process dies, or when any component exits on its own (fail fast and loudly: a half-dead control plane makes
confusing test failures).

Single-threaded on purpose: every wait is a poll loop that also watches the stop flag and the children.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import yaml

from kimi_testbed import nodes as nodes_mod
from kimi_testbed import procs
from kimi_testbed import realnode as realnode_mod
from kimi_testbed.pause import ensure_pause_image
from kimi_testbed.pki import Pki, ensure_client_cert, ensure_pki
from kimi_testbed.rest import JsonObj, KubeRest, request

SERVICE_CIDR = "10.96.0.0/16"
LWS_GROUP = "leaderworkerset.x-k8s.io"
MARKER_CONFIGMAP = "kimi-testbed"  # in kube-system: tells fixtures a cluster is one of ours
KCM_CONTROLLERS = (
    "garbage-collector-controller",
    "namespace-controller",
    "serviceaccount-controller",
    "serviceaccount-token-controller",
    "root-ca-certificate-publisher-controller",
    "clusterrole-aggregation-controller",
    "deployment-controller",
    "replicaset-controller",
    "statefulset-controller",
    "daemonset-controller",
    "job-controller",
    "cronjob-controller",
    "ttl-after-finished-controller",
    "pod-garbage-collector-controller",
    "disruption-controller",
    "resourcequota-controller",
    "horizontal-pod-autoscaler-controller",
    "endpoints-controller",
    "endpointslice-controller",
    "service-cidr-controller",
    # node-lifecycle removes the node.kubernetes.io/not-ready taint that admission puts on new nodes, and marks
    # nodes NotReady when kwok stops renewing their leases; taint-eviction then evicts their pods.
    "node-lifecycle-controller",
    "taint-eviction-controller",
    "persistentvolume-binder-controller",
    "persistentvolume-protection-controller",
    "persistentvolumeclaim-protection-controller",
)
# The controller manager's and scheduler's own client rate limits. Their defaults (20 QPS / burst 30, scheduler
# 50 / 100) are what a kubeadm cluster ships; at 1,000 KimiDeployments created at once (make bench) the test bed's
# controllers must write ~6 objects each (fetch pod, PVC binding, EndpointSlices, Job status), which at 20 QPS is a
# five-minute floor that measures client-go's token bucket, not the operator. Production control planes raise these
# too (they are per-cluster settings, not the operator's); the test bed sets them so the bench measures the operator.
KCM_CLIENT_FLAGS = ("--kube-api-qps=400", "--kube-api-burst=800", "--concurrent-job-syncs=10")
SCHEDULER_CLIENT_FLAGS = ("--kube-api-qps=400", "--kube-api-burst=800")


RESTART_REQUEST = "restart-apiserver"  # in the cluster dir: the supervisor restarts the API server (tests)


class StartError(RuntimeError):
    def __init__(self, message: str, component: str | None = None) -> None:
        super().__init__(message)
        self.component = component


class Stopping(Exception):  # noqa: N818 - control flow, not an error
    """A stop was requested while starting."""


def cidr_lock_dir() -> Path:
    return Path(tempfile.gettempdir()) / f"kimi-testbed-{os.getuid()}"


def lock_cidr_byte() -> tuple[int, IO[str]]:
    """Reserve a second octet for pod IPs (127.<b>.x.y), machine-wide, for as long as this process lives."""
    base = cidr_lock_dir()
    base.mkdir(parents=True, exist_ok=True)
    for b in range(10, 250):
        fh = (base / f"cidr-{b}.lock").open("a")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            continue
        return b, fh
    raise StartError(f"no free pod-IP range: 240 clusters hold locks in {base}")


@dataclass
class Component:
    name: str
    argv: list[str]
    log: Path
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc else 0


@dataclass
class Check:
    """A readiness condition polled while starting."""

    name: str
    fn: Callable[[], tuple[bool, str]]
    component: str | None = None
    needs: tuple[str, ...] = ()  # names of checks that must pass first
    on_pass: Callable[[], None] | None = None
    passed_at: float | None = None
    last: str = "not checked yet"


class Supervisor:
    def __init__(self, cluster_dir: Path) -> None:
        self.dir = cluster_dir
        self.spec: JsonObj = json.loads((cluster_dir / "spec.json").read_text())
        self.name: str = self.spec["name"]
        self.bin = Path(self.spec["bin_dir"])
        self.pools: dict[str, int] = self.spec["pools"]
        self.owner_pid: int = int(self.spec.get("owner_pid") or 0)
        self.timeout = float(self.spec.get("timeout", 180))
        self.want_real_node = bool(self.spec.get("real_node"))
        self.real_node: realnode_mod.RealNode | None = None
        self.logs = cluster_dir / "logs"
        self.stop_requested = False
        self.components: dict[str, Component] = {}
        self.state: JsonObj = {}
        self.t0 = time.monotonic()
        self.peak_rss_kib = 0
        self._last_state_write = 0.0

    # -- bookkeeping -------------------------------------------------------------------------------------------
    def log(self, msg: str) -> None:
        print(f"[supervisor {time.strftime('%H:%M:%S')} +{time.monotonic() - self.t0:5.1f}s] {msg}", flush=True)

    def write_state(self, **updates: Any) -> None:
        self.state.update(updates)
        self.state["components"] = {
            c.name: {"pid": c.pid, "log": str(c.log), "argv": c.argv} for c in self.components.values()
        }
        self.state["peak_rss_kib"] = self.peak_rss_kib
        tmp = self.dir / "state.json.tmp"
        tmp.write_text(json.dumps(self.state, indent=2))
        tmp.replace(self.dir / "state.json")
        self._last_state_write = time.monotonic()

    def _on_signal(self, _signum: int, _frame: object) -> None:
        self.stop_requested = True

    def check_stop(self) -> None:
        if self.stop_requested:
            raise Stopping("stop requested")
        if self.owner_pid and not procs.pid_alive(self.owner_pid):
            self.log(f"owner process {self.owner_pid} is gone")
            raise Stopping(f"owner process {self.owner_pid} exited")

    def check_children(self) -> None:
        for comp in self.components.values():
            if comp.proc is not None and comp.proc.poll() is not None:
                raise StartError(
                    f"{comp.name} exited with status {comp.proc.returncode}; last lines of {comp.log}:\n"
                    + procs.tail(comp.log),
                    comp.name,
                )

    def sample_memory(self) -> None:
        total = sum(procs.memory_kib(c.pid)[0] for c in self.components.values() if c.proc)
        if total > self.peak_rss_kib:
            self.peak_rss_kib = total
            if time.monotonic() - self._last_state_write > 2.0:
                self.write_state()

    # -- processes ---------------------------------------------------------------------------------------------
    def spawn(self, comp: Component) -> None:
        self.check_stop()
        env = dict(os.environ)
        env.update(comp.env)
        self.log(f"starting {comp.name}: {' '.join(comp.argv)}")
        with comp.log.open("ab") as log:
            comp.proc = subprocess.Popen(
                comp.argv,
                cwd=self.dir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                close_fds=True,
                preexec_fn=procs.die_with_parent(os.getpid()),
            )
        self.components[comp.name] = comp
        self.write_state()

    def stop_all(self) -> None:
        order = [
            "kimi-device-plugin",
            "kubelet",
            "containerd",
            "lws-controller",
            "kwok",
            "kube-scheduler",
            "kube-controller-manager",
            "kube-apiserver",
            "etcd",
        ]
        for name in order:
            comp = self.components.get(name)
            if comp is None:
                continue
            self._stop(comp, 10 if name in ("kube-apiserver", "etcd", "containerd", "kubelet") else 5)
            if name == "containerd" and self.real_node is not None:
                # what outlives containerd (shims, pods), then every host effect, recorded before it was made
                self.real_node.stop_pods_and_undo()
        if self.real_node is not None:  # also when containerd never started
            self.real_node.stop_pods_and_undo()

    def _stop(self, comp: Component, timeout: float) -> None:
        """SIGTERM, then SIGKILL if it has not exited within `timeout` seconds (nothing if it is not running)."""
        if comp.proc is None or comp.proc.poll() is not None:
            return
        comp.proc.terminate()
        try:
            comp.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.log(f"{comp.name} ignored SIGTERM for {timeout:g}s; killing it")
            comp.proc.kill()
            comp.proc.wait()

    # -- configuration -----------------------------------------------------------------------------------------
    def kubeconfig(self, path: Path, user: str, token: str, server: str, pki: Pki) -> Path:
        ca = base64.b64encode(pki.ca_crt.read_bytes()).decode()
        cfg = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": self.name, "cluster": {"server": server, "certificate-authority-data": ca}}],
            "users": [{"name": user, "user": {"token": token}}],
            "contexts": [{"name": self.name, "context": {"cluster": self.name, "user": user}}],
            "current-context": self.name,
        }
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        path.chmod(0o600)
        return path

    def prepare(self) -> None:
        for stale in ("etcd-data", "logs", "kubeconfigs", "lws-certs", "kwok-home"):
            shutil.rmtree(self.dir / stale, ignore_errors=True)
        self.logs.mkdir(parents=True)
        (self.dir / "kubeconfigs").mkdir()
        self.pki = ensure_pki(self.dir / "pki")

        self.ports = {
            name: procs.free_port()
            for name in (
                "etcd",
                "etcd_peer",
                "apiserver",
                "kcm",
                "scheduler",
                "kwok",
                "lws_webhook",
                "lws_health",
            )
        }
        self.server = f"https://127.0.0.1:{self.ports['apiserver']}"

        users = {
            "admin": ("kimi-testbed-admin", "system:masters"),
            "kcm": ("system:kube-controller-manager", ""),
            "scheduler": ("system:kube-scheduler", ""),
            "kwok": ("kwok-controller", "system:masters"),
            "lws": ("lws-controller-manager", "system:masters"),
        }
        self.tokens = {key: secrets.token_hex(24) for key in users}
        lines = [
            f'{self.tokens[key]},{user},{user},"{groups}"' if groups else f"{self.tokens[key]},{user},{user}"
            for key, (user, groups) in users.items()
        ]
        (self.dir / "tokens.csv").write_text("\n".join(lines) + "\n")
        (self.dir / "tokens.csv").chmod(0o600)
        kc = self.dir / "kubeconfigs"
        self.kubeconfigs = {
            key: self.kubeconfig(kc / f"{key}.kubeconfig", users[key][0], self.tokens[key], self.server, self.pki)
            for key in users
        }
        self.admin_kubeconfig = self.kubeconfig(
            self.dir / "kubeconfig", users["admin"][0], self.tokens["admin"], self.server, self.pki
        )
        self.api = KubeRest(self.server, self.tokens["admin"], self.pki.ca_crt)
        if self.real_node is not None:
            self.prepare_real_node(self.real_node)

        # kwok: its own default Stages (copied from the kwok module by build-bins.sh), nothing from ~/.kwok
        stages = sorted((self.bin / "kwok-stages").glob("*.yaml"))
        (self.dir / "kwok.yaml").write_text("\n---\n".join(s.read_text().strip() for s in stages) + "\n")
        (self.dir / "kwok-home").mkdir()

        # LWS: no leader election, no internal cert rotation, webhook on loopback with our CA's cert
        certs = self.dir / "lws-certs"
        certs.mkdir()
        shutil.copy(self.pki.loopback_crt, certs / "tls.crt")
        shutil.copy(self.pki.loopback_key, certs / "tls.key")
        lws_cfg = {
            "apiVersion": "config.lws.x-k8s.io/v1alpha1",
            "kind": "Configuration",
            "leaderElection": {"leaderElect": False},
            "internalCertManagement": {"enable": False},
            "webhook": {"host": "127.0.0.1", "port": self.ports["lws_webhook"], "certDir": str(certs)},
            "metrics": {"bindAddress": "0"},
            "health": {"healthProbeBindAddress": f"127.0.0.1:{self.ports['lws_health']}"},
        }
        (self.dir / "lws-config.yaml").write_text(yaml.safe_dump(lws_cfg, sort_keys=False))

    def prepare_real_node(self, node: realnode_mod.RealNode) -> None:
        """Certificates, the pause image and the host effects that come before containerd (bridge, sysctls)."""
        # the kubelet's client cert: the Node authorizer and RBAC know it by this name and group
        self.node_client = ensure_client_cert(
            self.pki, "real-node-client", f"/CN=system:node:{realnode_mod.NODE_NAME}/O=system:nodes"
        )
        # the API server's client cert for logs, exec, port-forward (the kubelet authorizes it by webhook)
        self.apiserver_kubelet_client = ensure_client_cert(
            self.pki, "apiserver-kubelet-client", "/CN=kube-apiserver-kubelet-client/O=system:masters"
        )
        try:
            self.pause_image = ensure_pause_image()
            node.prepare(self.pause_image.ref)
        except (RuntimeError, OSError) as err:
            raise StartError(f"preparing the real node: {err}", "real-node") from err

    @staticmethod
    def component(spec: realnode_mod.ComponentSpec) -> Component:
        return Component(spec.name, spec.argv, spec.log, spec.env)

    def start_real_node(self) -> None:
        """After the API server and containerd answer: iptables, the images, kubelet, the device plugin."""
        node = self.real_node
        assert node is not None
        import ipaddress

        service_ip = str(ipaddress.IPv4Network(SERVICE_CIDR)[1])  # the `kubernetes` Service's ClusterIP
        try:
            node.add_iptables(service_ip, self.ports["apiserver"])
            node.import_images([self.pause_image.path])  # the sandbox image, before any pod can start
        except (realnode_mod.RealNodeError, subprocess.TimeoutExpired) as err:
            raise StartError(f"starting the real node: {err}", "containerd") from err
        crt, key = self.node_client
        self.spawn(self.component(node.kubelet_component(self.server, self.pki.ca_crt, crt, key)))
        self.spawn(self.component(node.device_plugin_component()))
        node.start_imports(realnode_mod.image_archives(self.log))  # the pod images, meanwhile

    def _images_imported(self) -> tuple[bool, str]:
        assert self.real_node is not None
        try:
            return self.real_node.imports_done()
        except realnode_mod.RealNodeError as err:
            raise StartError(f"importing images into the real node: {err}", "containerd") from err

    def _real_node_ready(self) -> tuple[bool, str]:
        resp = self.api.call("GET", f"/api/v1/nodes/{realnode_mod.NODE_NAME}")
        if resp.status != 200:
            return False, f"node {realnode_mod.NODE_NAME}: HTTP {resp.status}"
        node = resp.json()
        conds = {c["type"]: c["status"] for c in (node.get("status") or {}).get("conditions") or []}
        gpus = ((node.get("status") or {}).get("allocatable") or {}).get("nvidia.com/gpu")
        ok = conds.get("Ready") == "True" and gpus == str(nodes_mod.GPUS_PER_NODE)
        return ok, f"node {realnode_mod.NODE_NAME}: Ready={conds.get('Ready')}, allocatable nvidia.com/gpu={gpus}"

    def components_spec(self) -> dict[str, Component]:
        b, p, pki, d = self.bin, self.ports, self.pki, self.dir
        loop_tls = [f"--tls-cert-file={pki.loopback_crt}", f"--tls-private-key-file={pki.loopback_key}"]
        etcd_peer = f"http://127.0.0.1:{p['etcd_peer']}"
        specs = [
            Component(
                "etcd",
                [
                    str(b / "etcd"),
                    "--name=etcd",
                    f"--data-dir={d / 'etcd-data'}",
                    f"--listen-client-urls=http://127.0.0.1:{p['etcd']}",
                    f"--advertise-client-urls=http://127.0.0.1:{p['etcd']}",
                    f"--listen-peer-urls={etcd_peer}",
                    f"--initial-advertise-peer-urls={etcd_peer}",
                    f"--initial-cluster=etcd={etcd_peer}",
                    "--unsafe-no-fsync=true",
                    "--log-level=warn",
                ],
                self.logs / "etcd.log",
            ),
            Component(
                "kube-apiserver",
                [
                    str(b / "kube-apiserver"),
                    f"--etcd-servers=http://127.0.0.1:{p['etcd']}",
                    f"--secure-port={p['apiserver']}",
                    "--bind-address=127.0.0.1",
                    "--advertise-address=127.0.0.1",
                    f"--tls-cert-file={pki.apiserver_crt}",
                    f"--tls-private-key-file={pki.apiserver_key}",
                    f"--client-ca-file={pki.ca_crt}",
                    f"--token-auth-file={d / 'tokens.csv'}",
                    "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                    f"--service-account-key-file={pki.sa_pub}",
                    f"--service-account-signing-key-file={pki.sa_key}",
                    f"--service-cluster-ip-range={SERVICE_CIDR}",
                    "--authorization-mode=Node,RBAC",
                    "--allow-privileged=true",
                    "--profiling=false",
                    *self.apiserver_kubelet_flags(),
                ],
                self.logs / "kube-apiserver.log",
            ),
            Component(
                "kube-controller-manager",
                [
                    str(b / "kube-controller-manager"),
                    f"--kubeconfig={self.kubeconfigs['kcm']}",
                    f"--authentication-kubeconfig={self.kubeconfigs['kcm']}",
                    f"--authorization-kubeconfig={self.kubeconfigs['kcm']}",
                    "--bind-address=127.0.0.1",
                    f"--secure-port={p['kcm']}",
                    *loop_tls,
                    "--leader-elect=false",
                    f"--controllers={','.join(KCM_CONTROLLERS)}",
                    f"--service-account-private-key-file={pki.sa_key}",
                    f"--root-ca-file={pki.ca_crt}",
                    "--use-service-account-credentials=true",
                    f"--service-cluster-ip-range={SERVICE_CIDR}",
                    *KCM_CLIENT_FLAGS,
                    "--profiling=false",
                ],
                self.logs / "kube-controller-manager.log",
            ),
            Component(
                "kube-scheduler",
                [
                    str(b / "kube-scheduler"),
                    f"--kubeconfig={self.kubeconfigs['scheduler']}",
                    f"--authentication-kubeconfig={self.kubeconfigs['scheduler']}",
                    f"--authorization-kubeconfig={self.kubeconfigs['scheduler']}",
                    "--bind-address=127.0.0.1",
                    f"--secure-port={p['scheduler']}",
                    *loop_tls,
                    "--leader-elect=false",
                    *SCHEDULER_CLIENT_FLAGS,
                    "--profiling=false",
                ],
                self.logs / "kube-scheduler.log",
            ),
            Component(
                "kwok",
                [
                    str(b / "kwok"),
                    f"--kubeconfig={self.kubeconfigs['kwok']}",
                    f"--config={d / 'kwok.yaml'}",
                    "--manage-all-nodes=false",
                    f"--manage-nodes-with-annotation-selector={nodes_mod.KWOK_ANNOTATION}={nodes_mod.KWOK_ANNOTATION_VALUE}",
                    f"--server-address=127.0.0.1:{p['kwok']}",
                    f"--node-ip=127.{self.cidr_byte}.0.254",
                    f"--cidr=127.{self.cidr_byte}.255.0/24",
                    "--node-lease-duration-seconds=40",
                ],
                self.logs / "kwok.log",
                env={"HOME": str(d / "kwok-home")},
            ),
            Component(
                "lws-controller",
                [
                    str(b / "lws-controller"),
                    f"--config={d / 'lws-config.yaml'}",
                    "--leader-elect=false",
                ],
                self.logs / "lws-controller.log",
                env={"KUBECONFIG": str(self.kubeconfigs["lws"])},
            ),
        ]
        if self.real_node is not None:
            specs.append(self.component(self.real_node.containerd_component()))  # kubelet: after the API server
        return {c.name: c for c in specs}

    def apiserver_kubelet_flags(self) -> list[str]:
        """How the API server reaches the real kubelet (logs, exec, port-forward): its IP, and a client cert."""
        if self.real_node is None:
            return []
        crt, key = self.apiserver_kubelet_client
        return [
            "--kubelet-preferred-address-types=InternalIP,Hostname",  # node names do not resolve here
            f"--kubelet-client-certificate={crt}",
            f"--kubelet-client-key={key}",
        ]

    # -- checks ------------------------------------------------------------------------------------------------
    def _http_ok(self, url: str, expect: str | None = None) -> tuple[bool, str]:
        try:
            resp = request(url, ca_file=self.pki.ca_crt, timeout=2.0)
        except OSError as err:
            return False, str(err)
        ok = resp.status == 200 and (expect is None or expect in resp.text)
        return ok, f"HTTP {resp.status} {resp.text.strip()[:200]}"

    def _apiserver_ready(self) -> tuple[bool, str]:
        try:
            resp = self.api.call("GET", "/readyz", timeout=3.0)
        except OSError as err:
            return False, str(err)
        return resp.status == 200, f"HTTP {resp.status} {resp.text.strip()[-300:]}"

    def _crds_established(self) -> tuple[bool, str]:
        for crd in self.crd_names:
            resp = self.api.call("GET", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{crd}")
            if resp.status != 200:
                return False, f"{crd}: HTTP {resp.status}"
            conds = {c["type"]: c["status"] for c in (resp.json().get("status") or {}).get("conditions") or []}
            if conds.get("Established") != "True":
                return False, f"{crd} not Established yet: {conds}"
        return True, "established"

    def _webhook_answers(self) -> tuple[bool, str]:
        """A server-side dry-run create of a LeaderWorkerSet goes through both LWS webhooks."""
        probe = {
            "apiVersion": f"{LWS_GROUP}/v1",
            "kind": "LeaderWorkerSet",
            "metadata": {"name": "testbed-webhook-probe", "namespace": "default"},
            "spec": {
                "replicas": 1,
                "leaderWorkerTemplate": {
                    "size": 2,
                    "workerTemplate": {"spec": {"containers": [{"name": "probe", "image": "probe"}]}},
                },
            },
        }
        try:
            resp = self.api.call("POST", f"/apis/{LWS_GROUP}/v1/namespaces/default/leaderworkersets?dryRun=All", probe)
        except OSError as err:
            return False, str(err)
        if resp.status not in (200, 201):
            return False, f"HTTP {resp.status} {resp.text.strip()[:300]}"
        # only LWS's mutating webhook sets this default (the CRD schema has none): proof that it was called
        policy = (resp.json().get("spec", {}).get("networkConfig") or {}).get("subdomainPolicy")
        return policy == "Shared", f"dry-run create answered, networkConfig.subdomainPolicy={policy!r}"

    def _nodes_ready(self) -> tuple[bool, str]:
        resp = self.api.call("GET", "/api/v1/nodes?labelSelector=type%3Dkwok")
        if resp.status != 200:
            return False, f"HTTP {resp.status}"
        want = sum(self.pools.values())
        ready, waiting = 0, []
        for node in resp.json().get("items", []):
            conds = {c["type"]: c["status"] for c in (node.get("status") or {}).get("conditions") or []}
            taints = [t["key"] for t in (node.get("spec") or {}).get("taints") or []]
            if conds.get("Ready") == "True" and not taints:
                ready += 1
            else:
                waiting.append(f"{node['metadata']['name']}(Ready={conds.get('Ready')}, taints={taints})")
        return ready == want, f"{ready}/{want} Ready and untainted; waiting: {', '.join(waiting) or '-'}"

    def _default_sa(self) -> tuple[bool, str]:
        resp = self.api.call("GET", "/api/v1/namespaces/default/serviceaccounts/default")
        return resp.status == 200, f"HTTP {resp.status}"

    # -- actions -----------------------------------------------------------------------------------------------
    def apply_crds(self) -> None:
        self.crd_names: list[str] = []
        for path in sorted((self.bin / "lws-manifests").glob("*_*.yaml")):
            for doc in yaml.safe_load_all(path.read_text()):
                if not doc or doc.get("kind") != "CustomResourceDefinition":
                    continue
                name = doc["metadata"]["name"]
                resp = self.api.apply(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}", doc)
                if resp.status not in (200, 201):
                    raise StartError(f"applying CRD {name}: HTTP {resp.status} {resp.text[:500]}")
                self.crd_names.append(name)
        self.log(f"applied CRDs {', '.join(self.crd_names)}")

    def apply_webhooks(self) -> None:
        """LWS's webhook configurations, pointed at the loopback webhook server, with our CA."""
        ca = base64.b64encode(self.pki.ca_crt.read_bytes()).decode()
        base = f"https://127.0.0.1:{self.ports['lws_webhook']}"
        lws_pods_only = {"matchExpressions": [{"key": "leaderworkerset.sigs.k8s.io/name", "operator": "Exists"}]}
        path = self.bin / "lws-manifests" / "webhook-manifests.yaml"
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc:
                continue
            for hook in doc.get("webhooks", []):
                svc_path = hook["clientConfig"]["service"]["path"]
                hook["clientConfig"] = {"url": base + svc_path, "caBundle": ca}
                # upstream's kustomize patches (config/webhook/{mutating,validating}-patch.yaml) limit the pod
                # webhooks to LWS pods; without this every pod create in the cluster would call LWS
                if any(r.get("resources") == ["pods"] for r in hook.get("rules", [])):
                    hook["objectSelector"] = lws_pods_only
            doc["metadata"]["name"] = f"lws-{doc['metadata']['name']}"
            plural = "mutatingwebhookconfigurations"
            if doc["kind"] == "ValidatingWebhookConfiguration":
                plural = "validatingwebhookconfigurations"
            resp = self.api.apply(f"/apis/admissionregistration.k8s.io/v1/{plural}/{doc['metadata']['name']}", doc)
            if resp.status not in (200, 201):
                raise StartError(f"applying {doc['kind']}: HTTP {resp.status} {resp.text[:500]}")
        self.log("applied LWS webhook configurations")

    def create_nodes(self) -> None:
        for node in nodes_mod.node_manifests(self.pools, self.cidr_byte):
            name = node["metadata"]["name"]
            resp = self.api.call("POST", "/api/v1/nodes", node)
            if resp.status not in (200, 201):
                raise StartError(f"creating node {name}: HTTP {resp.status} {resp.text[:500]}")
            # status on create is kept for nodes today; patch it anyway so capacity never depends on that
            resp = self.api.call(
                "PATCH",
                f"/api/v1/nodes/{name}/status",
                {"status": node["status"]},
                content_type="application/merge-patch+json",
            )
            if resp.status != 200:
                raise StartError(f"setting status of node {name}: HTTP {resp.status} {resp.text[:500]}")
        self.log(f"created {sum(self.pools.values())} nodes: {self.pools}")

    def create_marker(self) -> None:
        cm = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": MARKER_CONFIGMAP, "namespace": "kube-system"},
            "data": {
                "name": self.name,
                "dir": str(self.dir),
                "podIPRange": f"127.{self.cidr_byte}.0.0/16",
                "pools": json.dumps(self.pools),
                "realNode": realnode_mod.NODE_NAME if self.real_node is not None else "",
                "note": "a kimi-operator local test cluster (hack/kimi_testbed); nodes and GPUs are simulated",
            },
        }
        resp = self.api.apply(f"/api/v1/namespaces/kube-system/configmaps/{MARKER_CONFIGMAP}", cm)
        if resp.status not in (200, 201):
            raise StartError(f"creating the marker ConfigMap: HTTP {resp.status} {resp.text[:300]}")

    # -- the run -----------------------------------------------------------------------------------------------
    def wait_checks(self, checks: list[Check], deadline: float) -> None:
        by_name = {c.name: c for c in checks}
        while True:
            self.check_stop()
            self.check_children()
            pending = [c for c in checks if c.passed_at is None]
            if not pending:
                return
            for chk in pending:
                if any(by_name[n].passed_at is None for n in chk.needs):
                    continue
                ok, seen = chk.fn()
                if not ok and seen != chk.last:
                    self.log(f"waiting for {chk.name}: {seen[:200]}")
                chk.last = seen
                if ok:
                    chk.passed_at = time.monotonic() - self.t0
                    self.log(f"{chk.name}: ready at {chk.passed_at:.1f}s")
                    self.state.setdefault("timings", {})[chk.name] = round(chk.passed_at, 2)
                    if chk.on_pass:
                        chk.on_pass()
                    self.write_state()
            self.sample_memory()
            if time.monotonic() > deadline:
                lines = []
                component = None
                for chk in checks:
                    if chk.passed_at is None:
                        lines.append(f"  {chk.name}: {chk.last}")
                        component = component or chk.component
                msg = f"not ready after {self.timeout:.0f}s:\n" + "\n".join(lines)
                if component:
                    comp = self.components.get(component)
                    if comp:
                        msg += f"\nlast lines of {comp.log}:\n{procs.tail(comp.log)}"
                raise StartError(msg, component)
            time.sleep(0.2)

    def start(self) -> None:
        deadline = self.t0 + self.timeout
        self.cidr_byte, self._cidr_lock = lock_cidr_byte()
        if self.want_real_node:
            node = realnode_mod.RealNode(self.name, self.dir, self.bin, self.logs, self.log)
            try:
                node.claim()
            except realnode_mod.RealNodeError as err:
                raise StartError(str(err), "real-node") from err
            self.real_node = node
        self.prepare()
        self.write_state(
            name=self.name,
            dir=str(self.dir),
            phase="starting",
            supervisor_pid=os.getpid(),
            owner_pid=self.owner_pid,
            bin_dir=str(self.bin),
            pools=self.pools,
            cidr_byte=self.cidr_byte,
            pod_ip_range=f"127.{self.cidr_byte}.0.0/16",
            ports=self.ports,
            server=self.server,
            kubeconfig=str(self.admin_kubeconfig),
            started_at=time.time(),
        )
        specs = self.components_spec()
        self.spawn(specs["etcd"])
        self.spawn(specs["kube-apiserver"])
        if "containerd" in specs:
            self.spawn(specs["containerd"])

        def after_apiserver() -> None:
            for name in ("kube-controller-manager", "kube-scheduler", "kwok"):
                self.spawn(specs[name])
            self.create_nodes()
            self.create_marker()
            self.apply_crds()

        def after_crds() -> None:
            self.spawn(specs["lws-controller"])

        p = self.ports
        checks = [
            Check(
                "etcd",
                lambda: self._http_ok(f"http://127.0.0.1:{p['etcd']}/health", '"health":"true"'),
                "etcd",
            ),
            Check("kube-apiserver", self._apiserver_ready, "kube-apiserver", ("etcd",), after_apiserver),
            Check("crds", self._crds_established, "kube-apiserver", ("kube-apiserver",), after_crds),
            Check(
                "kube-controller-manager",
                lambda: self._http_ok(f"https://127.0.0.1:{p['kcm']}/healthz"),
                "kube-controller-manager",
                ("kube-apiserver",),
            ),
            Check(
                "kube-scheduler",
                lambda: self._http_ok(f"https://127.0.0.1:{p['scheduler']}/readyz"),
                "kube-scheduler",
                ("kube-apiserver",),
            ),
            Check("kwok", lambda: self._http_ok(f"http://127.0.0.1:{p['kwok']}/healthz"), "kwok", ("kube-apiserver",)),
            Check(
                "lws-controller",
                lambda: self._http_ok(f"http://127.0.0.1:{p['lws_health']}/readyz"),
                "lws-controller",
                ("crds",),
                self.apply_webhooks,
            ),
            Check("lws-webhook", self._webhook_answers, "lws-controller", ("lws-controller",)),
            Check("nodes", self._nodes_ready, "kwok", ("kwok", "kube-controller-manager")),
            Check("default-serviceaccount", self._default_sa, "kube-controller-manager", ("kube-controller-manager",)),
        ]
        if self.real_node is not None:
            node = self.real_node
            checks += [
                Check("containerd", node.containerd_ready, "containerd"),
                Check(
                    "real-node-start",
                    lambda: (True, "started"),
                    "containerd",
                    ("kube-apiserver", "containerd"),
                    self.start_real_node,
                ),
                Check("real-node", self._real_node_ready, "kubelet", ("real-node-start", "kube-controller-manager")),
                Check("real-node-images", self._images_imported, "containerd", ("real-node-start",)),
            ]
        self.wait_checks(checks, deadline)
        elapsed = time.monotonic() - self.t0
        self.sample_memory()
        if self.real_node is not None and self.real_node.net is not None:
            net = self.real_node.net
            self.state["real_node"] = {
                "node": realnode_mod.NODE_NAME,
                "node_ip": net.node_ip,
                "bridge": realnode_mod.BRIDGE,
                "pod_cidr": str(net.cidr),
                "kubelet_port": self.real_node.kubelet_port,
                "sandbox_image": self.real_node.sandbox_image,
                "images": self.real_node.imported,
                "node_dir": str(self.real_node.paths.root),
                "taint": realnode_mod.REAL_TAINT,
            }
        self.write_state(phase="ready", startup_seconds=round(elapsed, 2))
        self.log(f"cluster {self.name!r} ready in {elapsed:.1f}s")

    def serve(self) -> None:
        while True:
            self.check_stop()
            self.restart_if_asked()
            self.check_children()
            self.sample_memory()
            time.sleep(1.0)

    def restart_if_asked(self) -> None:
        """An outage on request (``Cluster.restart_apiserver``): the file RESTART_REQUEST holds the seconds the API
        server stays down. It is stopped (SIGTERM, as a rolling control-plane upgrade does), started again with
        the same arguments after that pause, and the file is removed once /readyz answers again."""
        request_file = self.dir / RESTART_REQUEST
        if not request_file.is_file():
            return
        try:
            down = float(request_file.read_text().strip() or "0")
        except ValueError:
            down = 0.0
        comp = self.components["kube-apiserver"]
        self.log(f"restarting kube-apiserver (down {down:g}s), as asked")
        self._stop(comp, 30)
        t_down = time.monotonic()
        while time.monotonic() - t_down < down:
            self.check_stop()
            time.sleep(0.2)
        comp.proc = None
        self.spawn(comp)
        check = Check("kube-apiserver again", self._apiserver_ready, component="kube-apiserver")
        self.wait_checks([check], time.monotonic() + self.timeout)
        restarts = int(self.state.get("apiserver_restarts") or 0) + 1
        self.write_state(apiserver_restarts=restarts, apiserver_down_seconds=round(time.monotonic() - t_down, 2))
        request_file.unlink(missing_ok=True)
        self.log(f"kube-apiserver ready again, {time.monotonic() - t_down:.1f}s after it stopped")

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_signal)
        code = 0
        try:
            self.start()
            self.serve()
        except Stopping as stop:
            self.log(f"stopping: {stop}")
        except StartError as err:
            code = 1
            self.log(f"FAILED: {err}")
            self.write_state(phase="failed", error=str(err), failed_component=err.component)
        except Exception as err:  # a bug here must still leave a readable state and no strays
            code = 2
            self.log(f"FAILED (supervisor error): {err!r}")
            self.write_state(phase="failed", error=f"supervisor error: {err!r}", failed_component=None)
            raise
        finally:
            if self.state.get("phase") != "failed":
                self.write_state(phase="stopping")
            self.stop_all()
            summary = {
                k: self.state.get(k)
                for k in ("name", "phase", "error", "startup_seconds", "timings", "peak_rss_kib", "pools")
            }
            if summary["phase"] == "stopping":
                summary["phase"] = "stopped"
            summary["stopped_at"] = time.time()
            (self.dir / "last-run.json").write_text(json.dumps(summary, indent=2))
            if code == 0:
                with contextlib.suppress(FileNotFoundError):
                    (self.dir / "state.json").unlink()
                shutil.rmtree(self.dir / "etcd-data", ignore_errors=True)
            self.log("all components stopped")
        return code


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m kimi_testbed.supervisor CLUSTER_DIR", file=sys.stderr)
        return 64
    return Supervisor(Path(argv[0])).run()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
