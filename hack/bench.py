"""make bench: the operator's numbers on the local control plane (a benchmark: it prints, it asserts nothing).

1. apply-to-children latency: time from `kubectl apply` of a KimiDeployment until every first-stage child exists
   (weights PVC, fetch Job, Service, headless Service), and until Ready (the simulated download completes at once),
   p50/p95 over N KimiDeployments applied one after another;
2. API writes and reads per idle KimiDeployment over a window (goals 0 and <= 0.1 per KD per minute), from the
   operator's own counters (reads: every GET/LIST/log call; the read cache should leave ~none);
3. operator RSS with M KimiDeployments (replicas 0, so no pods compete for the 4 simulated nodes).

    python hack/bench.py [--n 20] [--idle-seconds 600] [--many 200] [--cluster bench]
Other benchmarks: hack/bench_autoscaler.py (policy vs HPA-style), hack/bench_fetch.py (fetcher vs hf download).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from kimi_operator import kube
from kimi_testbed.cluster import Cluster
from kimi_testbed.hub import HubStandIn, RepoLayout
from kimi_testbed.operator_proc import OperatorProcess
from kimi_testbed.storage import prebound_pv

ROOT = Path(__file__).resolve().parents[1]
CRD = ROOT / "crds" / "kimi-operator.dev_kimideployments.yaml"


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


class Bench:
    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.kube = kube.Kube(cluster.api_client())

    def kubectl(self, *args: str, stdin: str | None = None) -> str:
        out = subprocess.run(
            [str(self.cluster.bin_dir / "kubectl"), "--kubeconfig", str(self.cluster.kubeconfig), *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if out.returncode:
            raise RuntimeError(f"kubectl {' '.join(args)}: {out.stderr}")
        return out.stdout

    def apply(self, objs: list[dict[str, Any]]) -> None:
        self.kubectl("apply", "--server-side", "--field-manager=bench", "-f", "-", stdin=yaml.safe_dump_all(objs))

    def namespace(self, name: str) -> str:
        self.apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}])
        return name

    def kd_and_pv(self, ns: str, name: str, replicas: int = 1) -> list[dict[str, Any]]:
        return [
            prebound_pv(ns, f"{name}-weights"),
            {
                "apiVersion": "kimi-operator.dev/v1alpha1",
                "kind": "KimiDeployment",
                "metadata": {"name": name, "namespace": ns},
                "spec": {"replicas": replicas},
            },
        ]

    def children(self, ns: str, name: str) -> set[tuple[str, str]]:
        found, _ = self.kube.list_children(ns, f"app.kubernetes.io/instance={name}")
        return set(found)

    def ready(self, ns: str, name: str) -> bool:
        return self.is_ready(self.kube.get_kd(ns, name) or {})

    @staticmethod
    def is_ready(body: dict[str, Any]) -> bool:
        st = body.get("status") or {}
        gen = body.get("metadata", {}).get("generation")
        return any(
            c["type"] == "Ready" and c["status"] == "True" and c.get("observedGeneration") == gen
            for c in st.get("conditions", [])
        )


def wait(fn: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not fn():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.02)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=20, help="KimiDeployments for the latency run")
    ap.add_argument("--idle-seconds", type=int, default=120, help="idle window for the write count (600 = 10 min)")
    ap.add_argument("--many", type=int, default=200, help="KimiDeployments for the memory run")
    ap.add_argument("--cluster", default="bench")
    ap.add_argument("--resync-seconds", type=int, default=60, help="the operator's periodic resync (default 60)")
    args = ap.parse_args()

    cluster = Cluster.start(args.cluster)
    log_dir = Path(tempfile.mkdtemp(prefix="kimi-bench-"))
    # the Hub stand-in (a test double) answers the operator's revision lookups
    hub = HubStandIn(RepoLayout(repo_id="moonshotai/Kimi-K2.5", shards=1, shard_bytes=1 << 20, decoys=False)).start()
    op = OperatorProcess(
        cluster.kubeconfig, log_dir, resync_seconds=args.resync_seconds, extra_env={"HF_ENDPOINT": hub.endpoint}
    )
    results: dict[str, Any] = {}
    try:
        b = Bench(cluster)
        b.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD))
        b.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/kimideployments.kimi-operator.dev")
        op.start()
        ns = b.namespace("bench-latency")
        first = {
            ("PersistentVolumeClaim", "{n}-weights"),
            ("Job", "{n}-fetch"),
            ("Service", "{n}"),
            ("Service", "{n}-headless"),
        }
        to_children, to_ready = [], []
        for i in range(args.n):
            name = f"lat-{i}"
            want = {(k, v.format(n=name)) for k, v in first}
            t0 = time.monotonic()
            b.apply(b.kd_and_pv(ns, name))
            wait(lambda: want <= b.children(ns, name), 60, f"children of {name}")  # noqa: B023
            to_children.append(time.monotonic() - t0)
            wait(lambda: b.ready(ns, name), 120, f"{name} Ready")  # noqa: B023
            to_ready.append(time.monotonic() - t0)
            b.kubectl("scale", "kd", name, "-n", ns, "--replicas=0")  # free the node for the next one
        results["apply_to_children_s"] = {"p50": pct(to_children, 50), "p95": pct(to_children, 95), "n": args.n}
        results["apply_to_ready_s"] = {"p50": pct(to_ready, 50), "p95": pct(to_ready, 95), "n": args.n}
        results["note"] = "the weights download and pod start are simulated (kwok): Ready latency is the operator's"

        wait(lambda: all(b.ready(ns, f"lat-{i}") for i in range(args.n)), 120, "all Ready at 0 replicas")
        time.sleep(5)
        w0, r0, g0, l0 = op.writes(), op.reconciles(), op.reads("get"), op.reads("list")
        time.sleep(args.idle_seconds)
        w1, r1, g1, l1 = op.writes(), op.reconciles(), op.reads("get"), op.reads("list")
        minutes = args.idle_seconds / 60
        results["idle"] = {
            "kimideployments": args.n,
            "seconds": args.idle_seconds,
            "writes": w1 - w0,
            "writes_per_kd": (w1 - w0) / args.n,
            "reconciles": r1 - r0,
            "gets": g1 - g0,
            "lists": l1 - l0,
            "reads_per_kd_per_minute": round((g1 - g0 + l1 - l0) / args.n / minutes, 3),
        }

        ns2 = b.namespace("bench-many")
        rss0 = op.rss_kib()
        batch: list[dict[str, Any]] = []
        for i in range(args.many):
            batch += b.kd_and_pv(ns2, f"m-{i}", replicas=0)
            if len(batch) >= 40:
                b.apply(batch)
                batch = []
        if batch:
            b.apply(batch)
        t0 = time.monotonic()
        # one KimiDeployment in another namespace, applied right behind the burst: the work queue serves
        # namespaces in turn, so it need not wait for the whole burst
        lone = b.namespace("bench-lone")
        b.apply(b.kd_and_pv(lone, "lone", replicas=0))
        t_lone = time.monotonic()
        first_ready: float | None = None
        lone_ready: float | None = None
        while True:  # one LIST every 0.25 s: how many are Ready (the first, then all)
            ready = sum(1 for body in b.kube.list_kds(ns2) if b.is_ready(body))
            if ready and first_ready is None:
                first_ready = time.monotonic() - t0
            if lone_ready is None and b.ready(lone, "lone"):
                lone_ready = time.monotonic() - t_lone
            if ready == args.many:
                break
            if time.monotonic() - t0 > 900:
                raise TimeoutError(f"many Ready: {ready}/{args.many}")
            time.sleep(0.25)
        settle = time.monotonic() - t0
        time.sleep(10)
        results["memory"] = {
            "kimideployments": args.many + args.n + 1,
            "rss_mib_before": round(rss0 / 1024, 1),
            "rss_mib_after": round(op.rss_kib() / 1024, 1),
            "all_ready_after_s": round(settle, 1),
            "first_ready_after_s": round(first_ready or 0.0, 1),
            "other_namespace_ready_after_s": round(lone_ready, 1) if lone_ready is not None else None,
        }
        print(json.dumps(results, indent=2))
        print(
            f"\napply->children p50 {results['apply_to_children_s']['p50'] * 1000:.0f} ms, "
            f"p95 {results['apply_to_children_s']['p95'] * 1000:.0f} ms; apply->Ready p50 "
            f"{results['apply_to_ready_s']['p50']:.2f} s, p95 {results['apply_to_ready_s']['p95']:.2f} s"
        )
        print(
            f"idle writes: {results['idle']['writes']:.0f} over {args.idle_seconds} s for {args.n} KDs "
            f"({results['idle']['reconciles']:.0f} reconciles); reads: {results['idle']['gets']:.0f} GET, "
            f"{results['idle']['lists']:.0f} LIST = {results['idle']['reads_per_kd_per_minute']} per KD per minute"
        )
        print(
            f"operator RSS with {args.many + args.n} KDs: {results['memory']['rss_mib_after']} MiB "
            f"(before: {results['memory']['rss_mib_before']} MiB); {args.many} created at once: first Ready after "
            f"{results['memory']['first_ready_after_s']} s, all after {results['memory']['all_ready_after_s']} s; "
            f"one KD applied right behind them in another namespace: "
            + (
                f"Ready after {lone_ready:.1f} s"
                if lone_ready is not None
                else "not Ready before all of them were (served behind the burst)"
            )
        )
        print(f"children latencies (ms): {[round(x * 1000) for x in to_children]}")
    finally:
        op.stop()
        hub.stop()
        cluster.stop(remove=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
