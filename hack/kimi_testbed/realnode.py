"""The test bed's real node: one kubelet + containerd + runc + CNI node that runs real containers.

Started by the supervisor when the cluster spec asks for it (``Cluster.start(..., real_node=True)``, ``up
--real-node``). Every setting here was a failure first on this machine kind; shared/reference/real-node.md says
which and why. In short:

- containerd (Debian's 1.6, ``hack/node/install.sh``) with root, state, runc root, CNI config and IPAM data under
  ``.cluster/NAME/node/``; CRI ``restrict_oom_score_adj`` (nothing here may go below oom_score_adj 0) and our own
  pause image as ``sandbox_image`` (no registry is reachable); runc, cgroupfs.
- A Linux bridge with a /24 of its own (the first 10.244.N.0/24 that overlaps nothing on the host) whose address
  is the kubelet's ``--node-ip`` (kubelet refuses loopback node IPs); CNI bridge + host-local (+ loopback).
- iptables, every rule tagged ``kimi-testbed:<cluster>``: pod traffic that would leave the bridge is dropped (the
  bridge plugin turns on ip_forward; nothing may reach beyond this machine), and pods reach the API server
  through the ``kubernetes`` Service IP (DNAT to 127.0.0.1:<port>, ``route_localnet`` on the bridge).
- kubelet: cgroup v1 allowed, cgroupfs, oomScoreAdj 0, no iptables util chains, image GC off, x509 client auth
  with the test-bed CA and webhook authorization, its client cert ``CN=system:node:<node>`` (not named
  kubelet.crt: that name is its serving cert), the GPU labels of the kwok nodes, a label and a taint saying it is
  the real node (kimi-testbed.dev/node-kind=real: only pods that tolerate it land here, so kwok tests keep
  their nodes).
- ``kimi-device-plugin`` (hack/deviceplugin): 8 simulated ``nvidia.com/gpu``, Allocate sets
  NVIDIA_VISIBLE_DEVICES.

Host effects are written to a ledger (``/run/kimi-testbed/real-node.json``) BEFORE they are made, and undone by
``undo()``: on supervisor stop (SIGTERM/Ctrl-C/``cluster down``), and by the next start or ``cluster down`` after a
killed supervisor (``sweep_stale``). The kubelet's device-plugin directory (/var/lib/kubelet/device-plugins) is
fixed whatever ``--root-dir`` says, so there is ONE real node per machine: a machine-wide lock
(``/run/kimi-testbed/real-node.lock``) held by the supervisor that runs it; a second cluster asking for one fails
with the name of the holder. /run is a tmpfs: the ledger dies with a reboot, as do the effects it lists.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import yaml

from kimi_testbed import nodes as nodes_mod
from kimi_testbed import procs
from kimi_testbed.bins import REPO_ROOT

MACHINE_DIR = Path("/run/kimi-testbed")
LOCK_FILE = MACHINE_DIR / "real-node.lock"
LEDGER_FILE = MACHINE_DIR / "real-node.json"
NODE_NAME = "real-node"
BRIDGE = "kimitb0"
NODE_KIND_LABEL = "kimi-testbed.dev/node-kind"
REAL_TAINT = {"key": NODE_KIND_LABEL, "value": "real", "effect": "NoSchedule"}
DEVICE_PLUGIN_DIR = Path("/var/lib/kubelet/device-plugins")
DEVICE_PLUGIN_SOCKET = "kimi-testbed-gpu.sock"
DEVICE_PLUGIN_BIN = "kimi-device-plugin"
DEVICE_PLUGIN_SRC = REPO_ROOT / "hack" / "deviceplugin"
CNI_BIN_DIR = Path("/usr/lib/cni")
NETNS_DIR = Path("/run/netns")
CGROUP_ROOT = Path("/sys/fs/cgroup")
CGROUP_NAME = "kimi-testbed-node"  # the kubelet's cgroupRoot: its kubepods tree lives inside, away from others
# what kubelet (vm.*, kernel.*) and the CNI bridge plugin (ip_forward) change machine-wide
SYSCTLS = (
    "net.ipv4.ip_forward",
    "vm.overcommit_memory",
    "vm.panic_on_oom",
    "kernel.panic",
    "kernel.panic_on_oops",
    "kernel.keys.root_maxkeys",
    "kernel.keys.root_maxbytes",
)
HOST_PACKAGES_HINT = "run `make node-deps` (hack/node/install.sh: containerd, runc, CNI plugins, iptables from Debian)"


class RealNodeError(RuntimeError):
    """The real node cannot run here (not root, packages missing, already held by another cluster)."""


Log = Callable[[str], None]


# -- pure builders (unit-tested) -------------------------------------------------------------------------------
@dataclass(frozen=True)
class NodePaths:
    """Everything the real node writes lives under ``<cluster dir>/node``."""

    root: Path

    @property
    def containerd_root(self) -> Path:
        return self.root / "containerd" / "root"

    @property
    def containerd_state(self) -> Path:
        return self.root / "containerd" / "state"

    @property
    def containerd_config(self) -> Path:
        return self.root / "containerd.toml"

    @property
    def containerd_socket(self) -> Path:
        return self.root / "containerd.sock"

    @property
    def runc_root(self) -> Path:
        return self.root / "runc"

    @property
    def cni_conf_dir(self) -> Path:
        return self.root / "cni" / "net.d"

    @property
    def ipam_dir(self) -> Path:
        return self.root / "cni" / "ipam"

    @property
    def kubelet_root(self) -> Path:
        return self.root / "kubelet"

    @property
    def kubelet_pki(self) -> Path:
        return self.root / "kubelet-pki"

    @property
    def kubelet_config(self) -> Path:
        return self.root / "kubelet-config.yaml"

    @property
    def kubelet_kubeconfig(self) -> Path:
        return self.root / "kubelet.kubeconfig"

    @property
    def pod_logs(self) -> Path:
        return self.root / "pod-logs"

    @property
    def volume_plugins(self) -> Path:
        return self.root / "volume-plugins"

    @property
    def opt(self) -> Path:
        return self.root / "containerd" / "opt"


@dataclass(frozen=True)
class Network:
    cidr: ipaddress.IPv4Network

    @property
    def gateway(self) -> ipaddress.IPv4Address:
        return self.cidr.network_address + 1

    @property
    def node_ip(self) -> str:
        return str(self.gateway)


def pick_network(taken: Iterable[ipaddress.IPv4Network], avoid: Iterable[str] = ("10.96.0.0/16",)) -> Network:
    """The first 10.244.N.0/24 that overlaps no address or route on the host (``taken``) nor ``avoid``."""
    busy = [*taken, *(ipaddress.IPv4Network(a) for a in avoid)]
    for third in range(256):
        cand = ipaddress.IPv4Network(f"10.244.{third}.0/24")
        if not any(cand.overlaps(n) for n in busy):
            return Network(cand)
    raise RealNodeError("no free /24 in 10.244.0.0/16 for the real node's bridge")


def host_networks() -> list[ipaddress.IPv4Network]:
    """Every IPv4 address and route destination on the host, except our own bridge's."""
    out: list[ipaddress.IPv4Network] = []
    for argv in (["ip", "-4", "-o", "addr", "show"], ["ip", "-4", "route", "show", "table", "all"]):
        text = subprocess.run(argv, capture_output=True, text=True, check=False).stdout
        for line in text.splitlines():
            if f" {BRIDGE} " in f" {line} ":
                continue
            for tok in re.findall(r"\b\d+\.\d+\.\d+\.\d+(?:/\d+)?\b", line):
                with contextlib.suppress(ValueError):
                    out.append(ipaddress.IPv4Network(tok, strict=False))
    return [n for n in out if not n.is_loopback and n.prefixlen > 0]


def containerd_config(paths: NodePaths, sandbox_image: str) -> str:
    """containerd 1.6 config (version 2): everything under ``paths``; CRI as real-node.md requires."""
    q = json.dumps  # a TOML basic string is a JSON string for the paths we write
    return f"""version = 2
root = {q(str(paths.containerd_root))}
state = {q(str(paths.containerd_state))}
oom_score = 0
disabled_plugins = [
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing",
]

[grpc]
  address = {q(str(paths.containerd_socket))}

[ttrpc]
  address = {q(str(paths.containerd_socket) + ".ttrpc")}

[debug]
  level = "info"

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = {q(str(paths.opt))}

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = {q(sandbox_image)}
  restrict_oom_score_adj = true
  disable_apparmor = true
  enable_selinux = false
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_tls_streaming = false
  max_container_log_line_size = 16384

  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    discard_unpacked_layers = false

    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"

      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "runc"
        Root = {q(str(paths.runc_root))}
        SystemdCgroup = false

  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = {q(str(CNI_BIN_DIR))}
    conf_dir = {q(str(paths.cni_conf_dir))}
    max_conf_num = 1

  [plugins."io.containerd.grpc.v1.cri".image_decryption]
    key_model = "node"
"""


def cni_conflist(paths: NodePaths, net: Network, cluster: str) -> dict[str, Any]:
    """A bridge network on ``BRIDGE`` with host-local IPAM (its data under the cluster dir); no masquerade."""
    return {
        "cniVersion": "1.0.0",
        "name": f"kimi-testbed-{cluster}",
        "plugins": [
            {
                "type": "bridge",
                "bridge": BRIDGE,
                "isGateway": True,
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "dataDir": str(paths.ipam_dir),
                    "ranges": [[{"subnet": str(net.cidr), "gateway": str(net.gateway)}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                },
            }
        ],
    }


def node_labels(kind: str = nodes_mod.DEFAULT_POOL) -> dict[str, str]:
    """The kwok GPU nodes' labels (GPU feature discovery and instance type), plus the real-node label."""
    acc = nodes_mod.ACCELERATORS[kind]
    return {
        "node.kubernetes.io/instance-type": acc.instance_type,
        "nvidia.com/gpu.product": acc.product,
        "nvidia.com/gpu.count": str(nodes_mod.GPUS_PER_NODE),
        "nvidia.com/gpu.memory": str(acc.memory_mib),
        "nvidia.com/gpu.present": "true",
        nodes_mod.POOL_LABEL: kind.lower(),
        NODE_KIND_LABEL: "real",
    }


def kubelet_config(paths: NodePaths, net: Network, ca_file: Path, port: int, healthz_port: int) -> dict[str, Any]:
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": net.node_ip,  # the bridge address only: the kubelet API never listens on eth0
        "port": port,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": healthz_port,
        "containerRuntimeEndpoint": f"unix://{paths.containerd_socket}",
        "failCgroupV1": False,
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": f"/{CGROUP_NAME}",
        "oomScoreAdj": 0,
        "makeIPTablesUtilChains": False,
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "podLogsDir": str(paths.pod_logs),
        "volumePluginDir": str(paths.volume_plugins),
        "authentication": {
            "x509": {"clientCAFile": str(ca_file)},
            "webhook": {"enabled": True},
            "anonymous": {"enabled": False},
        },
        "authorization": {"mode": "Webhook"},
        "registerWithTaints": [REAL_TAINT],
        "evictionHard": {
            "memory.available": "100Mi",
            "nodefs.available": "1%",
            "imagefs.available": "1%",
            "nodefs.inodesFree": "1%",
        },
        "serializeImagePulls": False,
        "resolvConf": "/etc/resolv.conf",
        "maxPods": 110,
        "protectKernelDefaults": False,
        "nodeStatusUpdateFrequency": "4s",
        "syncFrequency": "10s",
        "fileCheckFrequency": "0s",
        "httpCheckFrequency": "0s",
        "shutdownGracePeriod": "0s",
    }


def kubelet_kubeconfig(server: str, ca_file: Path, crt: Path, key: Path) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "testbed", "cluster": {"server": server, "certificate-authority": str(ca_file)}}],
        "users": [{"name": NODE_NAME, "user": {"client-certificate": str(crt), "client-key": str(key)}}],
        "contexts": [{"name": "testbed", "context": {"cluster": "testbed", "user": NODE_NAME}}],
        "current-context": "testbed",
    }


def iptables_rules(cluster: str, service_ip: str, apiserver_port: int) -> list[tuple[str, str, list[str]]]:
    """(table, chain, rule) triples, each tagged ``kimi-testbed:<cluster>`` so undo finds them all."""
    tag = ["-m", "comment", "--comment", f"kimi-testbed:{cluster}"]
    return [
        # pods talk to each other and to the host, never beyond it (isGateway turned ip_forward on)
        ("filter", "FORWARD", ["-i", BRIDGE, "!", "-o", BRIDGE, *tag, "-j", "DROP"]),
        ("filter", "FORWARD", ["-o", BRIDGE, "!", "-i", BRIDGE, *tag, "-j", "DROP"]),
        # in-cluster clients (KUBERNETES_SERVICE_HOST) reach the API server, which listens on 127.0.0.1
        (
            "nat",
            "PREROUTING",
            [
                "-i",
                BRIDGE,
                "-d",
                f"{service_ip}/32",
                "-p",
                "tcp",
                "--dport",
                "443",
                *tag,
                "-j",
                "DNAT",
                "--to-destination",
                f"127.0.0.1:{apiserver_port}",
            ],
        ),
    ]


def device_plugin_source_hash(src: Path = DEVICE_PLUGIN_SRC) -> str:
    """The hash hack/build-bins.sh stamps next to the binary (go.mod, go.sum, then *.go in C order)."""
    data = b"".join(
        p.read_bytes() for p in [src / "go.mod", src / "go.sum", *sorted(src.glob("*.go"), key=lambda p: p.name)]
    )
    return hashlib.sha256(data).hexdigest()[:16]


# -- host checks -----------------------------------------------------------------------------------------------
def missing_host_parts() -> list[str]:
    """What this machine lacks to run the real node (empty: it can)."""
    missing = []
    if os.geteuid() != 0:
        missing.append("root (containerd, kubelet, bridge and iptables need it)")
    for tool in ("containerd", "containerd-shim-runc-v2", "ctr", "runc", "iptables", "ip"):
        if shutil.which(tool) is None:
            missing.append(tool)
    for plugin in ("bridge", "host-local", "loopback"):
        if not os.access(CNI_BIN_DIR / plugin, os.X_OK):
            missing.append(f"CNI plugin {CNI_BIN_DIR / plugin}")
    return missing


def check_binaries(bin_dir: Path) -> None:
    how = "build them with `make bins` (bash hack/build-bins.sh)"
    for name in ("kubelet", DEVICE_PLUGIN_BIN):
        if not os.access(bin_dir / name, os.X_OK):
            raise RealNodeError(f"{bin_dir} lacks {name}: {how}")
    stamp = bin_dir / f"{DEVICE_PLUGIN_BIN}.src"
    want = device_plugin_source_hash()
    have = stamp.read_text().strip() if stamp.is_file() else "none"
    if have != want:
        raise RealNodeError(f"{bin_dir / DEVICE_PLUGIN_BIN} was built from other sources ({have} != {want}): {how}")


# -- the ledger of host effects --------------------------------------------------------------------------------
class NodeLock:
    """The machine-wide real-node lock: held (flock) by the supervisor that runs the real node."""

    def __init__(self, fh: IO[str]) -> None:
        self.fh = fh

    @classmethod
    def acquire(cls) -> NodeLock | None:
        MACHINE_DIR.mkdir(parents=True, exist_ok=True)
        fh = LOCK_FILE.open("a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            return None
        return cls(fh)

    def set_holder(self, cluster: str, cluster_dir: Path) -> None:
        self.fh.seek(0)
        self.fh.truncate()
        self.fh.write(json.dumps({"cluster": cluster, "dir": str(cluster_dir), "pid": os.getpid()}) + "\n")
        self.fh.flush()

    def release(self) -> None:
        with contextlib.suppress(OSError):
            fcntl.flock(self.fh, fcntl.LOCK_UN)
        self.fh.close()


def lock_holder() -> str:
    try:
        data = json.loads(LOCK_FILE.read_text() or "{}")
    except (OSError, ValueError):
        return "another cluster"
    return f"cluster {data.get('cluster')!r} (supervisor pid {data.get('pid')}, {data.get('dir')})"


class Ledger:
    """Host effects, appended (and fsynced) before each is made; ``undo`` reverses them, each idempotently."""

    def __init__(self, path: Path = LEDGER_FILE) -> None:
        self.path = path

    def read(self) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return data

    def begin(self, cluster: str, cluster_dir: Path) -> None:
        self._write({"cluster": cluster, "dir": str(cluster_dir), "pid": os.getpid(), "effects": []})

    def record(self, kind: str, **data: Any) -> None:
        led = self.read()
        led.setdefault("effects", []).append({"kind": kind, **data})
        self._write(led)

    def _write(self, data: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        with tmp.open("w") as fh:
            fh.write(json.dumps(data, indent=2))
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(self.path)

    def clear(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def _run(argv: list[str], check: bool = False) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=60)


def read_sysctl(key: str) -> str | None:
    try:
        return (Path("/proc/sys") / key.replace(".", "/")).read_text().strip()
    except OSError:
        return None


def write_sysctl(key: str, value: str) -> None:
    (Path("/proc/sys") / key.replace(".", "/")).write_text(value + "\n")


def _owned_pids(marker: str) -> list[int]:
    """Processes whose command line names a path under ``marker`` (containerd shims carry its socket path)."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and procs.owned(int(entry.name), marker):
            out.append(int(entry.name))
    return out


def shim_pids(node_dir: Path) -> list[int]:
    return [p for p in _owned_pids(str(node_dir)) if "containerd-shim" in " ".join(procs.cmdline(p)[:1])]


def shim_socket(pid: int) -> Path | None:
    """The socket a containerd 1.6 shim listens on: /run/containerd/s/sha256(<address>/<namespace>/<id>).

    A shim removes it when it exits cleanly; one that was killed leaves it behind.
    """
    argv = procs.cmdline(pid)
    try:
        opts = {argv[i]: argv[i + 1] for i in range(1, len(argv) - 1) if argv[i] in ("-namespace", "-id", "-address")}
        key = f"{opts['-address']}/{opts['-namespace']}/{opts['-id']}"
    except KeyError:
        return None
    return Path("/run/containerd/s") / hashlib.sha256(key.encode()).hexdigest()


def _cgroup_dirs(name: str) -> list[Path]:
    """``name`` in every mounted cgroup hierarchy (v1 controllers and the v2 ``unified`` mount)."""
    if not CGROUP_ROOT.is_dir():
        return []
    return [d / name for d in sorted(CGROUP_ROOT.iterdir()) if (d / name).is_dir()]


def make_cgroup(name: str) -> None:
    """``name`` in every hierarchy (the kubelet checks its cgroupRoot exists in each); cpuset copies its parent's."""
    for hier in sorted(CGROUP_ROOT.iterdir()):
        if not (hier / "cgroup.procs").exists():
            continue
        (hier / name).mkdir(exist_ok=True)
        for knob in ("cpuset.cpus", "cpuset.mems"):
            if (hier / knob).exists():
                (hier / name / knob).write_text((hier / knob).read_text())


def kill_cgroup_tree(name: str, log: Log) -> int:
    """SIGKILL every process in the cgroup ``name`` (all hierarchies), then remove its cgroups bottom-up."""
    killed: set[int] = set()
    for _attempt in range(50):
        pids: set[int] = set()
        for top in _cgroup_dirs(name):
            for procs_file in top.rglob("cgroup.procs"):
                with contextlib.suppress(OSError, ValueError):
                    pids.update(int(x) for x in procs_file.read_text().split())
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        killed |= pids
        time.sleep(0.1)
    for top in _cgroup_dirs(name):
        for sub in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
            with contextlib.suppress(OSError):
                sub.rmdir()
        with contextlib.suppress(OSError):
            top.rmdir()
    left = [str(d) for d in _cgroup_dirs(name)]
    if left:
        log(f"cgroups left behind (still busy?): {', '.join(left)}")
    return len(killed)


def unmount_under(path: Path, log: Log) -> int:
    """Unmount every mount point at or below ``path`` (deepest first; lazily if busy)."""
    prefix = str(path).rstrip("/")
    count = 0
    for _attempt in range(5):
        points = []
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            point = line.split()[4].replace("\\040", " ")
            if point == prefix or point.startswith(prefix + "/"):
                points.append(point)
        if not points:
            break
        for point in sorted(set(points), key=len, reverse=True):
            if _run(["umount", point]).returncode != 0 and _run(["umount", "-l", point]).returncode != 0:
                log(f"could not unmount {point}")
            count += 1
    return count


def delete_iptables_tagged(tag: str, log: Log) -> int:
    """Delete every rule, in the filter and nat tables, whose comment is ``tag``."""
    removed = 0
    for table in ("filter", "nat"):
        out = _run(["iptables", "-w", "-t", table, "-S"])
        for line in out.stdout.splitlines():
            if not line.startswith("-A ") or (f"--comment {tag} " not in line + " " and f'"{tag}"' not in line):
                continue
            argv = ["iptables", "-w", "-t", table, "-D", *_split_rule(line[3:])]
            res = _run(argv)
            if res.returncode == 0:
                removed += 1
            else:
                log(f"could not delete iptables rule -t {table} {line}: {res.stderr.strip()}")
    return removed


def _split_rule(rule: str) -> list[str]:
    import shlex

    return shlex.split(rule)


def undo(ledger: Ledger, log: Log) -> None:
    """Reverse every effect the ledger lists (fixed order: processes, cgroups, mounts, netns, network, files)."""
    led = ledger.read()
    effects: list[dict[str, Any]] = led.get("effects", [])
    if not effects:
        ledger.clear()
        return
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for eff in effects:
        by_kind.setdefault(eff["kind"], []).append(eff)
    log(f"undoing {len(effects)} host effects of the real node of cluster {led.get('cluster')!r}")
    for eff in by_kind.get("cgroup", []):
        n = kill_cgroup_tree(eff["name"], log)
        if n:
            log(f"killed {n} pod processes in cgroup {eff['name']}")
    for eff in by_kind.get("node-dir", []):
        node_dir = Path(eff["path"])
        shims = shim_pids(node_dir)
        if shims:
            log(f"stopping {len(shims)} containerd shims of {node_dir}")
            sockets = [shim_socket(p) for p in shims]
            procs.terminate(shims, str(node_dir), grace=3.0)
            for sock in sockets:
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.unlink()
    for eff in by_kind.get("node-dir", []):
        n = unmount_under(Path(eff["path"]), log)
        if n:
            log(f"unmounted {n} mounts under {eff['path']}")
    for eff in by_kind.get("netns", []):
        before = set(eff.get("before", []))
        if NETNS_DIR.is_dir():
            for ns in sorted(NETNS_DIR.glob("cni-*")):
                if ns.name in before:
                    continue
                _run(["umount", str(ns)])
                with contextlib.suppress(OSError):
                    ns.unlink()
    for eff in by_kind.get("iptables", []):
        n = delete_iptables_tagged(eff["tag"], log)
        if n:
            log(f"deleted {n} iptables rules tagged {eff['tag']}")
    for eff in by_kind.get("bridge", []):
        if Path(f"/sys/class/net/{eff['name']}").exists():
            res = _run(["ip", "link", "del", eff["name"]])
            log(f"deleted bridge {eff['name']}" if res.returncode == 0 else f"ip link del: {res.stderr.strip()}")
    for eff in by_kind.get("sysctl", []):
        now = read_sysctl(eff["key"])
        if eff.get("before") is not None and now is not None and now != eff["before"]:
            with contextlib.suppress(OSError):
                write_sysctl(eff["key"], eff["before"])
                log(f"restored {eff['key']} = {eff['before']} (was {now})")
    for eff in by_kind.get("file", []):
        with contextlib.suppress(FileNotFoundError, IsADirectoryError):
            Path(eff["path"]).unlink()
    for eff in reversed(by_kind.get("dir", [])):
        shutil.rmtree(eff["path"], ignore_errors=True)
    ledger.clear()


def sweep_stale(log: Log) -> bool:
    """Undo what a killed supervisor's real node left on the host; False if a live supervisor holds the node."""
    if not LEDGER_FILE.exists():
        return True
    lock = NodeLock.acquire()
    if lock is None:
        return False
    try:
        undo(Ledger(), log)
    finally:
        lock.release()
    return True


# -- the node --------------------------------------------------------------------------------------------------
@dataclass
class ComponentSpec:
    name: str
    argv: list[str]
    log: Path
    env: dict[str, str] = field(default_factory=dict)


class RealNode:
    """One real node of one cluster, driven by its supervisor (which spawns and watches the processes)."""

    def __init__(self, cluster: str, cluster_dir: Path, bin_dir: Path, logs: Path, log: Log) -> None:
        self.cluster = cluster
        self.cluster_dir = cluster_dir
        self.bin = bin_dir
        self.logs = logs
        self.log = log
        self.paths = NodePaths(cluster_dir / "node")
        self.ledger = Ledger()
        self.lock: NodeLock | None = None
        self.net: Network | None = None
        self.sandbox_image = ""
        self.kubelet_port = 0
        self.healthz_port = 0
        self.imported: list[str] = []
        self._import_error = ""
        self._import_pending = False

    # -- before anything runs ------------------------------------------------------------------------------------
    def claim(self) -> None:
        """Take the machine's real node (or fail saying who has it) and sweep what a killed session left."""
        missing = missing_host_parts()
        if missing:
            raise RealNodeError(f"the real node needs {', '.join(missing)}: {HOST_PACKAGES_HINT}")
        check_binaries(self.bin)
        lock = NodeLock.acquire()
        if lock is None:
            raise RealNodeError(
                f"this machine's real node is in use by {lock_holder()}: one real node per machine (the kubelet's "
                f"device-plugin directory {DEVICE_PLUGIN_DIR} is fixed); stop that cluster first, or start this "
                "one without --real-node"
            )
        lock.set_holder(self.cluster, self.cluster_dir)
        if self.ledger.read():
            self.log("a killed session left real-node host effects: undoing them first")
            undo(self.ledger, self.log)
        live = DEVICE_PLUGIN_DIR / "kubelet.sock"
        if live.exists() and _socket_answers(live):
            lock.release()
            raise RealNodeError(f"another kubelet on this machine serves {live}: the real node cannot run beside it")
        self.lock = lock

    def prepare(self, sandbox_image: str) -> None:
        """Record and make the host effects that come before containerd: dirs, sysctls, bridge, iptables."""
        assert self.lock is not None
        self.sandbox_image = sandbox_image
        self.ledger.begin(self.cluster, self.cluster_dir)
        for key in SYSCTLS:
            self.ledger.record("sysctl", key=key, before=read_sysctl(key))
        for path in (Path("/var/lib/kubelet"), DEVICE_PLUGIN_DIR, Path("/var/lib/cni"), NETNS_DIR):
            if not path.exists():
                self.ledger.record("dir", path=str(path))
        for name in ("kubelet.sock", DEVICE_PLUGIN_SOCKET, "kubelet_internal_checkpoint"):
            self.ledger.record("file", path=str(DEVICE_PLUGIN_DIR / name))
        before = sorted(p.name for p in NETNS_DIR.glob("cni-*")) if NETNS_DIR.is_dir() else []
        self.ledger.record("netns", before=before)
        self.ledger.record("node-dir", path=str(self.paths.root))
        self.ledger.record("cgroup", name=CGROUP_NAME)
        if _cgroup_dirs(CGROUP_NAME):
            kill_cgroup_tree(CGROUP_NAME, self.log)
        make_cgroup(CGROUP_NAME)

        # our own files: a fresh node dir each start (mounts from a previous run were undone above)
        unmount_under(self.paths.root, self.log)
        shutil.rmtree(self.paths.root, ignore_errors=True)
        for d in (self.paths.root, self.paths.cni_conf_dir, self.paths.ipam_dir, self.paths.kubelet_root):
            d.mkdir(parents=True, exist_ok=True)
        for d in (self.paths.pod_logs, self.paths.volume_plugins, self.paths.kubelet_pki, self.paths.runc_root):
            d.mkdir(parents=True, exist_ok=True)

        self.net = pick_network(host_networks())
        self.ledger.record("bridge", name=BRIDGE, cidr=str(self.net.cidr))
        if Path(f"/sys/class/net/{BRIDGE}").exists():
            _run(["ip", "link", "del", BRIDGE])
        for argv in (
            ["ip", "link", "add", "name", BRIDGE, "type", "bridge"],
            ["ip", "addr", "add", f"{self.net.node_ip}/{self.net.cidr.prefixlen}", "dev", BRIDGE],
            ["ip", "link", "set", BRIDGE, "up"],
        ):
            res = _run(argv)
            if res.returncode != 0:
                raise RealNodeError(f"{' '.join(argv)} failed: {res.stderr.strip()}")
        write_sysctl(f"net.ipv4.conf.{BRIDGE}.route_localnet", "1")  # dies with the bridge
        self.log(f"bridge {BRIDGE} {self.net.node_ip}/{self.net.cidr.prefixlen}")
        self.paths.containerd_config.write_text(containerd_config(self.paths, sandbox_image))
        conflist = cni_conflist(self.paths, self.net, self.cluster)
        (self.paths.cni_conf_dir / "10-kimi-testbed.conflist").write_text(json.dumps(conflist, indent=2))

    def add_iptables(self, service_ip: str, apiserver_port: int) -> None:
        tag = f"kimi-testbed:{self.cluster}"
        self.ledger.record("iptables", tag=tag)
        delete_iptables_tagged(tag, self.log)  # none should exist; never twice
        for table, chain, rule in reversed(iptables_rules(self.cluster, service_ip, apiserver_port)):
            res = _run(["iptables", "-w", "-t", table, "-I", chain, "1", *rule])
            if res.returncode != 0:
                raise RealNodeError(f"iptables -t {table} -I {chain} {' '.join(rule)}: {res.stderr.strip()}")
        self.log(f"iptables: pod traffic stays on {BRIDGE}; {service_ip}:443 -> 127.0.0.1:{apiserver_port}")

    # -- processes ---------------------------------------------------------------------------------------------
    def containerd_component(self) -> ComponentSpec:
        return ComponentSpec(
            "containerd",
            ["containerd", f"--config={self.paths.containerd_config}"],
            self.logs / "containerd.log",
        )

    def kubelet_component(self, server: str, ca_file: Path, client_crt: Path, client_key: Path) -> ComponentSpec:
        assert self.net is not None
        self.kubelet_port = procs.free_port(self.net.node_ip)
        self.healthz_port = procs.free_port()
        cfg = kubelet_config(self.paths, self.net, ca_file, self.kubelet_port, self.healthz_port)
        self.paths.kubelet_config.write_text(yaml.safe_dump(cfg, sort_keys=False))
        kc = kubelet_kubeconfig(server, ca_file, client_crt, client_key)
        self.paths.kubelet_kubeconfig.write_text(yaml.safe_dump(kc, sort_keys=False))
        self.paths.kubelet_kubeconfig.chmod(0o600)
        labels = ",".join(f"{k}={v}" for k, v in node_labels().items())
        return ComponentSpec(
            "kubelet",
            [
                str(self.bin / "kubelet"),
                f"--config={self.paths.kubelet_config}",
                f"--kubeconfig={self.paths.kubelet_kubeconfig}",
                f"--root-dir={self.paths.kubelet_root}",
                f"--cert-dir={self.paths.kubelet_pki}",
                f"--hostname-override={NODE_NAME}",
                f"--node-ip={self.net.node_ip}",
                f"--node-labels={labels}",
                "--v=2",
            ],
            self.logs / "kubelet.log",
        )

    def device_plugin_component(self) -> ComponentSpec:
        return ComponentSpec(
            "kimi-device-plugin",
            [
                str(self.bin / DEVICE_PLUGIN_BIN),
                "--resource=nvidia.com/gpu",
                f"--count={nodes_mod.GPUS_PER_NODE}",
                f"--dir={DEVICE_PLUGIN_DIR}",
                f"--socket={DEVICE_PLUGIN_SOCKET}",
                # names the cluster dir, so procs.owned() and the stale sweep recognise it
                f"--testbed-dir={self.paths.root}",
            ],
            self.logs / "kimi-device-plugin.log",
        )

    def ctr(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        argv = ["ctr", f"--address={self.paths.containerd_socket}", "--namespace=k8s.io", *args]
        return subprocess.run(argv, capture_output=True, text=True, check=False, timeout=timeout)

    def containerd_ready(self) -> tuple[bool, str]:
        res = self.ctr("version", timeout=5)
        return res.returncode == 0, (res.stdout + res.stderr).strip()[-200:] or "no answer"

    def import_images(self, archives: Iterable[Path]) -> None:
        for archive in archives:
            t0 = time.monotonic()
            res = self.ctr("images", "import", "--no-unpack=false", str(archive))
            if res.returncode != 0:
                raise RealNodeError(f"ctr images import {archive} failed: {(res.stdout + res.stderr).strip()}")
            names = re.findall(r"unpacking (\S+)", res.stdout) or [archive.name]
            self.imported += names
            self.log(f"imported {', '.join(names)} from {archive} in {time.monotonic() - t0:.1f}s")

    def start_imports(self, archives: list[Path]) -> None:
        """Import ``archives`` in a background thread (they take seconds each); ``imports_done`` reports."""

        def work() -> None:
            try:
                self.import_images(archives)
            except (RealNodeError, subprocess.TimeoutExpired, OSError) as err:
                self._import_error = str(err)
            finally:
                self._import_pending = False

        self._import_error = ""
        self._import_pending = True
        self._import_thread = threading.Thread(target=work, name="image-import", daemon=True)
        self._import_thread.start()

    def imports_done(self) -> tuple[bool, str]:
        if self._import_error:
            raise RealNodeError(self._import_error)
        if self._import_pending:
            return False, f"importing images; done: {', '.join(self.imported) or 'none yet'}"
        return True, f"imported {', '.join(self.imported)}"

    def stop_pods_and_undo(self) -> None:
        """After kubelet and containerd have stopped: kill what they leave (shims, pods) and undo every effect."""
        if self.lock is None:
            return
        undo(self.ledger, self.log)
        self.lock.release()
        self.lock = None

    def memory_kib(self) -> dict[str, int]:
        """RSS of the containerd shims (one per pod), which are not the supervisor's children."""
        shims = shim_pids(self.paths.root)
        return {"shims": sum(procs.memory_kib(p)[0] for p in shims), "shim_count": len(shims)}


def image_archives(log: Log) -> list[Path]:
    """Image archives the images helper built (kimi_testbed.images.archives()), when that module exists."""
    try:
        from kimi_testbed import images  # type: ignore[attr-defined,unused-ignore]
    except ImportError:
        return []
    fn = getattr(images, "archives", None)
    if fn is None:
        return []
    try:
        found = list(fn())
    except Exception as err:  # their build state must not stop the node
        log(f"kimi_testbed.images.archives() failed: {err!r}; importing only the pause image")
        return []
    return [Path(getattr(a, "path", a)) for a in found]


def _socket_answers(path: Path) -> bool:
    import socket

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        try:
            sock.connect(str(path))
        except OSError:
            return False
    return True


# -- for tests ---------------------------------------------------------------------------------------------------
class NodeHandle:
    """The real node as tests see it: where it is, how a pod gets there, which images it has."""

    def __init__(self, info: dict[str, Any]) -> None:
        self.info = info
        self.name: str = str(info.get("node", NODE_NAME))
        self.node_ip: str = str(info.get("node_ip", ""))
        self.pod_cidr = ipaddress.IPv4Network(str(info.get("pod_cidr", "0.0.0.0/32")))
        self.paths = NodePaths(Path(str(info.get("node_dir", ""))))

    def placement(self) -> dict[str, Any]:
        """Pod spec fields that put a pod on the real node (and only there)."""
        return {
            "nodeSelector": {NODE_KIND_LABEL: "real"},
            "tolerations": [{**REAL_TAINT, "operator": "Equal"}],
        }

    def ctr(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        argv = ["ctr", f"--address={self.paths.containerd_socket}", "--namespace=k8s.io", *args]
        return subprocess.run(argv, capture_output=True, text=True, check=False, timeout=timeout)

    def images(self) -> list[str]:
        return self.ctr("images", "ls", "-q").stdout.split()

    def ensure_image(self, name: str) -> str:
        """The reference of image ``name`` (kimi_testbed.images), built if missing and imported if absent."""
        from kimi_testbed import images  # type: ignore[attr-defined,unused-ignore]

        ref: str = images.ref(name)
        if ref in self.images():
            return ref
        archives = images.build([name])
        for archive in archives:
            res = self.ctr("images", "import", str(archive))
            if res.returncode != 0:
                raise RealNodeError(f"ctr images import {archive}: {(res.stdout + res.stderr).strip()}")
        return ref
