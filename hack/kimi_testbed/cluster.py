"""A local Kubernetes control plane with simulated 8-GPU nodes: Python API and CLI.

    python -m kimi_testbed.cluster up     --name NAME [--nodes 4] [--pool H100=2 --pool B200=1] [--real-node]
    python -m kimi_testbed.cluster status --name NAME
    python -m kimi_testbed.cluster down   --name NAME

Everything runs on 127.0.0.1 on ports chosen free, under ``<repo>/.cluster/NAME/`` (kubeconfig, logs/, state.json),
so several clusters can coexist. ``up`` starts a detached supervisor (kimi_testbed.supervisor) that owns all the
processes, waits until the cluster is usable, prints the kubeconfig path and returns; ``down`` stops it.

From Python (pytest): ``Cluster.start(name, nodes=4, pools={"H100": 2}, real_node=True) -> Cluster``;
``.kubeconfig``, ``.bin_dir``, ``.real_node`` (None, or what the supervisor recorded about it), ``.api_client()``,
``.status()``, ``.stop()``. ``--real-node`` adds one kubelet + containerd node beside the kwok nodes
(kimi_testbed.realnode; root, one per machine).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kimi_testbed import procs, realnode
from kimi_testbed.bins import REPO_ROOT, BinariesMissingError, find_bin_dir
from kimi_testbed.nodes import parse_pools
from kimi_testbed.supervisor import MARKER_CONFIGMAP, RESTART_REQUEST

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

CLUSTERS_DIR = REPO_ROOT / ".cluster"
HACK_DIR = REPO_ROOT / "hack"


class ClusterError(RuntimeError):
    """The cluster could not be started, or is not in the state asked for."""


def new_api_client(kubeconfig: Path) -> ApiClient:
    """A kubernetes.client.ApiClient from a kubeconfig file (its own, not the process-wide default)."""
    from kubernetes import config

    api: ApiClient = config.new_client_from_config(config_file=str(kubeconfig))  # type: ignore[no-untyped-call]
    return api


def cluster_dir(name: str) -> Path:
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"bad cluster name {name!r}")
    return CLUSTERS_DIR / name


@dataclass
class Cluster:
    """A handle on one local cluster, started here or found running."""

    name: str
    dir: Path
    _proc: subprocess.Popen[bytes] | None = None
    _kubeconfig: Path | None = None  # set when found through a kubeconfig rather than by name

    # -- state -------------------------------------------------------------------------------------------------
    @property
    def state(self) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads((self.dir / "state.json").read_text())
        except (OSError, ValueError):
            return {}
        return data

    @property
    def kubeconfig(self) -> Path:
        return self._kubeconfig or self.dir / "kubeconfig"

    @property
    def bin_dir(self) -> Path:
        recorded = self.state.get("bin_dir")
        return Path(str(recorded)) if recorded else find_bin_dir()

    @property
    def server(self) -> str:
        return str(self.state.get("server", ""))

    @property
    def supervisor_pid(self) -> int:
        return int(self.state.get("supervisor_pid") or 0)

    @property
    def pod_ip_range(self) -> str:
        return str(self.state.get("pod_ip_range", ""))

    @property
    def real_node(self) -> dict[str, Any] | None:
        """What the supervisor recorded about the real node (node, node_ip, pod_cidr, images...), or None."""
        info = self.state.get("real_node")
        return dict(info) if isinstance(info, dict) else None

    def is_running(self) -> bool:
        st = self.state
        return st.get("phase") == "ready" and procs.owned(int(st.get("supervisor_pid") or 0), str(self.dir))

    def api_client(self) -> ApiClient:
        """A kubernetes.client.ApiClient for this cluster (admin)."""
        return new_api_client(self.kubeconfig)

    def kubectl(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run the cluster's own kubectl against it."""
        argv = [str(self.bin_dir / "kubectl"), f"--kubeconfig={self.kubeconfig}", *args]
        return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=timeout)

    # -- lifecycle ---------------------------------------------------------------------------------------------
    @classmethod
    def attach(cls, name: str) -> Cluster:
        """A handle on an already running cluster; raises ClusterError if it is not running."""
        cl = cls(name, cluster_dir(name))
        if not cl.is_running():
            raise ClusterError(f"cluster {name!r} is not running (no live supervisor in {cl.dir})")
        return cl

    @classmethod
    def from_kubeconfig(cls, kubeconfig: Path) -> Cluster | None:
        """The testbed cluster ``kubeconfig`` points at; None if nothing answers there.

        Raises ClusterError if a cluster answers but is not one of ours (no kube-system/kimi-testbed ConfigMap):
        tests must never run against a real cluster by accident.
        """
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        try:
            api = new_api_client(kubeconfig)
        except Exception as err:
            raise ClusterError(f"cannot load kubeconfig {kubeconfig}: {err}") from err
        try:
            marker = client.CoreV1Api(api).read_namespaced_config_map(
                MARKER_CONFIGMAP, "kube-system", _request_timeout=5
            )
        except ApiException as err:
            if err.status in (401, 403, 404):
                raise ClusterError(
                    f"KUBECONFIG={kubeconfig} points at a cluster that is not a kimi testbed "
                    f"(kube-system/{MARKER_CONFIGMAP}: HTTP {err.status}); unset KUBECONFIG to let the tests "
                    "start their own cluster"
                ) from err
            return None
        except Exception:  # connection refused, timeout, TLS: not running
            return None
        finally:
            api.close()  # type: ignore[no-untyped-call]
        data = marker.data or {}
        return cls(str(data.get("name", "external")), Path(data.get("dir", "")), _kubeconfig=kubeconfig)

    @classmethod
    def start(
        cls,
        name: str,
        nodes: int = 4,
        pools: dict[str, int] | None = None,
        *,
        owner_pid: int | None = None,
        timeout: float = 180.0,
        bin_dir: Path | None = None,
        echo: bool = False,
        real_node: bool = False,
    ) -> Cluster:
        """Start a cluster and wait until it is usable.

        ``nodes`` is the H200 pool; ``pools`` adds pools (``{"H100": 2}``). With ``owner_pid``, the cluster stops
        by itself when that process exits (pytest passes its own pid). ``real_node`` adds the kubelet + containerd
        node (kimi_testbed.realnode). Raises BinariesMissingError when the binaries are not built, ClusterError
        (with the failing component's log tail) when start-up fails.
        """
        resolved_bins = find_bin_dir(bin_dir)
        pool_spec = parse_pools(nodes, [f"{k}={v}" for k, v in (pools or {}).items()])
        cl = cls(name, cluster_dir(name))
        if cl.is_running():
            raise ClusterError(f"cluster {name!r} is already running; kubeconfig: {cl.kubeconfig}")
        cl._cleanup_stale()
        cl.dir.mkdir(parents=True, exist_ok=True)
        spec = {
            "name": name,
            "pools": pool_spec,
            "owner_pid": owner_pid or 0,
            "bin_dir": str(resolved_bins),
            "timeout": timeout,
            "real_node": real_node,
        }
        (cl.dir / "spec.json").write_text(json.dumps(spec, indent=2))
        with contextlib.suppress(FileNotFoundError):
            (cl.dir / "state.json").unlink()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(HACK_DIR), env.get("PYTHONPATH", "")) if p)
        log_path = cl.dir / "supervisor.log"
        with log_path.open("wb") as log:
            cl._proc = subprocess.Popen(
                [sys.executable, "-m", "kimi_testbed.supervisor", str(cl.dir)],
                cwd=cl.dir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # out of the terminal's process group: Ctrl-C is handled by us
                close_fds=True,
            )
        try:
            cl._wait_ready(timeout + 30, log_path, echo)
        except BaseException:
            cl.stop(remove=False)
            raise
        return cl

    def _wait_ready(self, timeout: float, log_path: Path, echo: bool) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + timeout
        shown = 0
        while True:
            if echo and log_path.exists():
                text = log_path.read_text(errors="replace").splitlines()
                for line in text[shown:]:
                    print(line, file=sys.stderr, flush=True)
                shown = len(text)
            st = self.state
            if st.get("phase") == "ready":
                return
            if st.get("phase") == "failed":
                raise ClusterError(f"cluster {self.name!r} failed to start: {st.get('error')}")
            if self._proc.poll() is not None:
                raise ClusterError(
                    f"the supervisor of cluster {self.name!r} exited with status {self._proc.returncode}; "
                    f"last lines of {log_path}:\n{procs.tail(log_path)}"
                )
            if time.monotonic() > deadline:
                raise ClusterError(f"cluster {self.name!r} not ready after {timeout:.0f}s; see {log_path}")
            time.sleep(0.2)

    def _cleanup_stale(self) -> None:
        """Kill what a dead supervisor may have left behind (children die with it, but be sure)."""
        st = self.state
        pids = [int(c.get("pid") or 0) for c in st.get("components", {}).values()]
        sup = int(st.get("supervisor_pid") or 0)
        if sup:
            pids.insert(0, sup)
        procs.terminate([p for p in pids if p], str(self.dir), grace=5.0)
        # a killed supervisor's real node leaves host effects (bridge, iptables, mounts, pods): undo them now
        with contextlib.suppress(OSError):
            if realnode.Ledger().read().get("dir") == str(self.dir):
                realnode.sweep_stale(lambda msg: print(f"kimi-testbed: {msg}", file=sys.stderr))
        with contextlib.suppress(FileNotFoundError):
            (self.dir / "state.json").unlink()

    def stop(self, remove: bool = False, timeout: float = 30.0) -> None:
        """Stop every process of the cluster (idempotent). ``remove`` also deletes the cluster dir."""
        st = self.state
        sup = int(st.get("supervisor_pid") or 0) or (self._proc.pid if self._proc else 0)
        if sup and procs.owned(sup, str(self.dir)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(sup, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while procs.pid_alive(sup) and time.monotonic() < deadline:
                if self._proc is not None:
                    self._proc.poll()
                time.sleep(0.1)
        if self._proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=1)
        self._cleanup_stale()
        if remove:
            shutil.rmtree(self.dir, ignore_errors=True)

    def restart_apiserver(self, down_seconds: float = 5.0, timeout: float = 120.0) -> float:
        """Stop the API server, keep it down `down_seconds`, start it again and wait until it is ready (every other
        component stays up). Returns the seconds it was unavailable, as the supervisor measured them."""
        before = int(self.state.get("apiserver_restarts") or 0)
        request_file = self.dir / RESTART_REQUEST
        request_file.write_text(f"{down_seconds}\n")
        deadline = time.monotonic() + timeout
        while request_file.exists() or int(self.state.get("apiserver_restarts") or 0) <= before:
            if not self.is_running():
                raise ClusterError(f"cluster {self.name} stopped during the API server restart; see {self.dir}")
            if time.monotonic() > deadline:
                raise ClusterError(f"the API server of {self.name} was not ready again after {timeout:g}s")
            time.sleep(0.2)
        return float(self.state.get("apiserver_down_seconds") or 0.0)

    # -- reporting ---------------------------------------------------------------------------------------------
    def memory(self) -> dict[str, tuple[int, int]]:
        """Per component (VmRSS, VmHWM) in KiB."""
        return {name: procs.memory_kib(int(c.get("pid") or 0)) for name, c in self.state.get("components", {}).items()}

    def status(self) -> str:
        st = self.state
        if not st:
            extra = ""
            try:
                last = json.loads((self.dir / "last-run.json").read_text())
                extra = (
                    f"; last run: {last.get('phase')}, started in {last.get('startup_seconds')}s, "
                    f"peak control plane RSS {int(last.get('peak_rss_kib') or 0) / 1024:.0f} MiB"
                )
                if last.get("error"):
                    extra += f", error: {last['error']}"
            except (OSError, ValueError):
                pass
            return f"cluster {self.name!r}: not running{extra}"
        sup = int(st.get("supervisor_pid") or 0)
        alive = procs.owned(sup, str(self.dir))
        lines = [
            f"cluster {self.name!r}: {st.get('phase')}{'' if alive else ' (supervisor gone)'}",
            f"  kubeconfig   {self.kubeconfig}",
            f"  api server   {st.get('server')}",
            f"  pod IPs      {st.get('pod_ip_range')}  nodes {st.get('pools')}",
            f"  startup      {st.get('startup_seconds', '-')} s   timings {st.get('timings', {})}",
        ]
        if st.get("error"):
            lines.append(f"  error        {st['error']}")
        total_rss = 0
        lines.append(f"  {'component':<24} {'pid':>8} {'state':<8} {'RSS MiB':>8} {'peak MiB':>9}")
        for name, comp in st.get("components", {}).items():
            pid = int(comp.get("pid") or 0)
            rss, hwm = procs.memory_kib(pid)
            total_rss += rss
            state = "running" if procs.pid_alive(pid) else "exited"
            lines.append(f"  {name:<24} {pid:>8} {state:<8} {rss / 1024:>8.0f} {hwm / 1024:>9.0f}")
        sup_rss = procs.memory_kib(sup)[0]
        lines.append(
            f"  control plane RSS now {total_rss / 1024:.0f} MiB, peak (sampled each second) "
            f"{int(st.get('peak_rss_kib', 0)) / 1024:.0f} MiB; supervisor {sup_rss / 1024:.0f} MiB"
        )
        node = st.get("real_node")
        if isinstance(node, dict):
            shims = realnode.shim_pids(Path(node.get("node_dir", self.dir / "node")))
            shim_rss = sum(procs.memory_kib(p)[0] for p in shims)
            node_rss = sum(
                procs.memory_kib(int(st["components"].get(n, {}).get("pid") or 0))[0]
                for n in ("kubelet", "containerd", "kimi-device-plugin")
            )
            lines.append(
                f"  real node    {node.get('node')} {node.get('node_ip')} (bridge {node.get('bridge')}, pods "
                f"{node.get('pod_cidr')}); RSS kubelet+containerd+device plugin {node_rss / 1024:.0f} MiB, "
                f"{len(shims)} shims {shim_rss / 1024:.0f} MiB"
            )
        lines.append(f"  logs         {self.dir / 'logs'}")
        return "\n".join(lines)


# -- CLI ---------------------------------------------------------------------------------------------------------
def _cmd_up(args: argparse.Namespace) -> int:
    try:
        extra = parse_pools(args.nodes, args.pool)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    pools = {k: v for k, v in extra.items() if k != "H200"}
    existing = Cluster(args.name, cluster_dir(args.name))
    if existing.is_running():
        print(f"cluster {args.name!r} is already running", file=sys.stderr)
        print(existing.kubeconfig)
        return 0
    t0 = time.monotonic()
    try:
        cl = Cluster.start(
            args.name,
            extra.get("H200", 0),
            pools,
            timeout=args.timeout,
            echo=args.verbose,
            real_node=args.real_node,
        )
    except BinariesMissingError as err:
        print(f"error: {err}", file=sys.stderr)
        return 3
    except ClusterError as err:
        print(f"error: {err}", file=sys.stderr)
        print(f"logs: {existing.dir / 'logs'}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; cluster stopped", file=sys.stderr)
        return 130
    st = cl.state
    peak = int(st.get("peak_rss_kib", 0)) / 1024
    print(
        f"cluster {args.name!r} ready in {time.monotonic() - t0:.1f}s "
        f"(supervisor: {st.get('startup_seconds')}s; ready at {st.get('timings')}); "
        f"control plane RSS {peak:.0f} MiB; nodes {st.get('pools')}, pod IPs {st.get('pod_ip_range')}",
        file=sys.stderr,
    )
    node = cl.real_node
    if node:
        print(
            f"  real node {node['node']} at {node['node_ip']} (pods {node['pod_cidr']}): put pods there with "
            f"nodeSelector {realnode.NODE_KIND_LABEL}=real and a toleration for that taint; images: "
            f"{', '.join(node.get('images') or []) or 'none'}",
            file=sys.stderr,
        )
    print(f"  export KUBECONFIG={cl.kubeconfig}", file=sys.stderr)
    print(f"  stop with: make cluster-down CLUSTER={args.name}", file=sys.stderr)
    print(cl.kubeconfig)
    return 0


def _cmd_down(args: argparse.Namespace) -> int:
    cl = Cluster(args.name, cluster_dir(args.name))
    running = bool(cl.state)
    cl.stop(remove=args.remove)
    print(f"cluster {args.name!r} {'stopped' if running else 'was not running'}", file=sys.stderr)
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    cl = Cluster(args.name, cluster_dir(args.name))
    print(cl.status())
    return 0 if cl.is_running() else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kimi_testbed.cluster", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="start a cluster and print its kubeconfig path")
    up.add_argument("--name", default="default")
    up.add_argument("--nodes", type=int, default=4, help="H200 nodes (default 4)")
    up.add_argument("--pool", action="append", default=[], metavar="KIND=COUNT", help="extra pool: H100=2, B200=1")
    up.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for readiness")
    up.add_argument(
        "--real-node",
        action="store_true",
        help="also run one real kubelet + containerd node with 8 simulated GPUs (root; one per machine)",
    )
    up.add_argument("-v", "--verbose", action="store_true", help="show the supervisor's progress")
    up.set_defaults(fn=_cmd_up)
    down = sub.add_parser("down", help="stop a cluster")
    down.add_argument("--name", default="default")
    down.add_argument("--remove", action="store_true", help="also delete its directory (logs, certs)")
    down.set_defaults(fn=_cmd_down)
    status = sub.add_parser("status", help="what runs, ports, memory")
    status.add_argument("--name", default="default")
    status.set_defaults(fn=_cmd_status)
    args = parser.parse_args(argv)
    code: int = args.fn(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
