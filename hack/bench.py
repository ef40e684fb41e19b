"""make bench: the operator's numbers on the local control plane (a benchmark: it prints, it asserts nothing).

1. latency, one KimiDeployment at a time on an idle cluster, created through the API (no kubectl in the timing),
   each object's creation seen by a watch: create -> first child, -> every first-stage child (weights PVC, fetch
   Job, Service, headless Service), -> Ready (the simulated download completes at once), and the serving
   Deployment's creation after the fetch Job's Complete condition (when the weights are known complete);
   p50/p95 over N;
2. API writes and reads per idle KimiDeployment over a window (goals 0 and <= 0.1 per KD per minute), from the
   operator's own counters (reads: every GET/LIST/log call; the read cache should leave ~none);
3. scale: M KimiDeployments (replicas 0, so only their fetch Jobs run) created at once, first across namespaces,
   then M more in one namespace with one KimiDeployment in another namespace right behind them: time to first and
   to all Ready, the operator's API requests per KimiDeployment, its CPU seconds and RSS.

    python hack/bench.py [--n 20] [--idle-seconds 120] [--many 1000] [--namespaces 10] [--cluster bench]
Other benchmarks: hack/bench_autoscaler.py (policy vs HPA-style), hack/bench_fetch.py (fetcher vs hf download).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import kubernetes

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


GROUP, VERSION, PLURAL = "kimi-operator.dev", "v1alpha1", "kimideployments"
CREATORS = 8  # parallel API clients creating a burst (kubectl apply of one big file would be one client)


def kimideployment(ns: str, name: str, replicas: int) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "KimiDeployment",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"replicas": replicas},
    }


def is_ready(body: dict[str, Any]) -> bool:
    st = body.get("status") or {}
    gen = body.get("metadata", {}).get("generation")
    return any(
        c["type"] == "Ready" and c["status"] == "True" and c.get("observedGeneration") == gen
        for c in st.get("conditions", [])
    )


class Bench:
    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.kube = kube.Kube(cluster.api_client())
        self._local = threading.local()

    def api(self) -> kubernetes.client.ApiClient:
        """One client per thread (a client's connection pool serves a few requests at once)."""
        client: kubernetes.client.ApiClient | None = getattr(self._local, "api", None)
        if client is None:
            client = self._local.api = self.cluster.api_client()
        return client

    def namespace(self, name: str) -> str:
        core = kubernetes.client.CoreV1Api(self.api())
        core.create_namespace({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})  # type: ignore[arg-type]
        return name

    def create_pv(self, ns: str, name: str) -> None:
        kubernetes.client.CoreV1Api(self.api()).create_persistent_volume(prebound_pv(ns, f"{name}-weights"))  # type: ignore[arg-type]

    def create_kd(self, ns: str, name: str, replicas: int = 1) -> None:
        kubernetes.client.CustomObjectsApi(self.api()).create_namespaced_custom_object(
            GROUP, VERSION, ns, PLURAL, kimideployment(ns, name, replicas)
        )

    def scale(self, ns: str, name: str, replicas: int) -> None:
        kubernetes.client.CustomObjectsApi(self.api()).patch_namespaced_custom_object(
            GROUP, VERSION, ns, PLURAL, name, {"spec": {"replicas": replicas}}
        )

    def ready(self, ns: str, name: str) -> bool:
        return is_ready(self.kube.get_kd(ns, name) or {})

    def all_kds(self) -> list[dict[str, Any]]:
        out = kubernetes.client.CustomObjectsApi(self.api()).list_cluster_custom_object(GROUP, VERSION, PLURAL)
        items: list[dict[str, Any]] = out["items"]  # type: ignore[index]
        return items

    def burst(self, items: list[tuple[str, str]], replicas: int = 0) -> float:
        """Create these KimiDeployments at once (their PVs first, untimed); returns when the creation began."""
        with ThreadPoolExecutor(CREATORS) as pool:
            list(pool.map(lambda item: self.create_pv(*item), items))
            t0 = time.monotonic()
            list(pool.map(lambda item: self.create_kd(item[0], item[1], replicas), items))
        return t0


class Seen:
    """When each object of these kinds in one namespace was first seen by a watch, and when each Job was first
    seen Complete: the bench's view of what the operator created, timed where it was created."""

    KINDS = ("PersistentVolumeClaim", "Job", "Service", "Deployment")

    def __init__(self, api: kubernetes.client.ApiClient, namespace: str) -> None:
        self.created: dict[tuple[str, str], float] = {}
        self.complete: dict[str, float] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        core, batch, apps = (
            kubernetes.client.CoreV1Api(api),
            kubernetes.client.BatchV1Api(api),
            kubernetes.client.AppsV1Api(api),
        )
        lists: dict[str, Callable[..., Any]] = {
            "PersistentVolumeClaim": core.list_namespaced_persistent_volume_claim,
            "Job": batch.list_namespaced_job,
            "Service": core.list_namespaced_service,
            "Deployment": apps.list_namespaced_deployment,
        }
        self._threads = [
            threading.Thread(target=self._watch, args=(kind, fn, namespace), daemon=True) for kind, fn in lists.items()
        ]
        for t in self._threads:
            t.start()

    def _watch(self, kind: str, list_fn: Callable[..., Any], namespace: str) -> None:
        rv = ""
        while not self._stop.is_set():
            w = kubernetes.watch.Watch()  # type: ignore[no-untyped-call]
            try:
                for event in w.stream(  # type: ignore[no-untyped-call]
                    list_fn, namespace=namespace, resource_version=rv, timeout_seconds=30
                ):
                    at = time.monotonic()
                    obj = event["raw_object"]
                    meta = obj.get("metadata") or {}
                    rv = meta.get("resourceVersion") or rv
                    with self._lock:
                        self.created.setdefault((kind, meta.get("name", "")), at)
                        conditions = (obj.get("status") or {}).get("conditions") or []
                        if kind == "Job" and any(
                            c.get("type") == "Complete" and c.get("status") == "True" for c in conditions
                        ):
                            self.complete.setdefault(meta.get("name", ""), at)
                    if self._stop.is_set():
                        break
            except Exception:  # a watch that expired or broke: start again from the last version seen
                rv = ""
                time.sleep(0.1)

    def when(self, kind: str, name: str) -> float | None:
        with self._lock:
            return self.created.get((kind, name))

    def completed(self, job: str) -> float | None:
        with self._lock:
            return self.complete.get(job)

    def stop(self) -> None:
        self._stop.set()


def wait(fn: Any, timeout: float, what: str, every: float = 0.005) -> None:
    deadline = time.monotonic() + timeout
    while not fn():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(every)


def scale_run(
    b: Bench, op: OperatorProcess, items: list[tuple[str, str]], lone: tuple[str, str] | None
) -> dict[str, Any]:
    """Create `items` at once (and `lone` right behind them); wait for all Ready, polling every 0.25 s."""
    want = set(items)
    reads0, writes0, cpu0 = op.reads(), op.writes(), op.cpu_seconds()
    t0 = b.burst(items)
    t_lone = time.monotonic()
    if lone is not None:
        b.create_pv(*lone)
        b.create_kd(*lone, replicas=0)
    first_ready: float | None = None
    lone_ready: float | None = None
    while True:
        ready = {(kd["metadata"]["namespace"], kd["metadata"]["name"]) for kd in b.all_kds() if is_ready(kd)}
        now = time.monotonic()
        done = len(want & ready)
        if done and first_ready is None:
            first_ready = now - t0
        if lone is not None and lone_ready is None and lone in ready:
            lone_ready = now - t_lone
        if done == len(want):
            break
        if now - t0 > 1200:
            raise TimeoutError(f"{done}/{len(want)} Ready after {now - t0:.0f} s")
        time.sleep(0.25)
    settle = time.monotonic() - t0
    reads, writes, cpu = op.reads() - reads0, op.writes() - writes0, op.cpu_seconds() - cpu0
    return {
        "kimideployments": len(items),
        "namespaces": len({ns for ns, _ in items}),
        "first_ready_after_s": round(first_ready or 0.0, 1),
        "all_ready_after_s": round(settle, 1),
        "other_namespace_ready_after_s": round(lone_ready, 1) if lone_ready is not None else None,
        "api_reads_per_kd": round(reads / len(items), 2),
        "api_writes_per_kd": round(writes / len(items), 2),
        "operator_cpu_s": round(cpu, 1),
        "operator_rss_mib": round(op.rss_kib() / 1024, 1),
    }


def latency_run(b: Bench, n: int) -> dict[str, Any]:
    ns = b.namespace("bench-latency")
    seen = Seen(b.api(), ns)
    time.sleep(1.0)  # the watches are open
    first_stage = (
        ("PersistentVolumeClaim", "{n}-weights"),
        ("Job", "{n}-fetch"),
        ("Service", "{n}"),
        ("Service", "{n}-headless"),
    )
    first, stage, serving, ready = [], [], [], []
    try:
        for i in range(n):
            name = f"lat-{i}"
            want = [(k, v.format(n=name)) for k, v in first_stage]
            b.create_pv(ns, name)
            t0 = time.monotonic()
            b.create_kd(ns, name)
            wait(lambda: all(seen.when(*w) is not None for w in want), 60, f"first-stage children of {name}")  # noqa: B023
            times = [seen.when(*w) or 0.0 for w in want]
            first.append(min(times) - t0)
            stage.append(max(times) - t0)
            wait(lambda: seen.when("Deployment", name) is not None, 120, f"serving Deployment of {name}")  # noqa: B023
            complete = seen.completed(f"{name}-fetch")
            if complete is not None:
                serving.append((seen.when("Deployment", name) or 0.0) - complete)
            wait(lambda: b.ready(ns, name), 120, f"{name} Ready", every=0.02)  # noqa: B023
            ready.append(time.monotonic() - t0)
            b.scale(ns, name, 0)  # free the node for the next one
        wait(lambda: all(b.ready(ns, f"lat-{i}") for i in range(n)), 120, "all Ready at 0 replicas", every=0.5)
    finally:
        seen.stop()

    def summary(values: list[float]) -> dict[str, float]:
        return {
            "p50_ms": round(pct(values, 50) * 1000, 1),
            "p95_ms": round(pct(values, 95) * 1000, 1),
            "n": len(values),
        }

    return {
        "create_to_first_child": summary(first),
        "create_to_first_stage": summary(stage),
        "weights_complete_to_serving_deployment": summary(serving),
        "create_to_ready": summary(ready),
        "first_child_ms": [round(x * 1000, 1) for x in first],
        "note": "the weights download and pod start are simulated (kwok): Ready latency is the operator's",
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=20, help="KimiDeployments for the latency run")
    ap.add_argument("--idle-seconds", type=int, default=120, help="idle window for the read/write count")
    ap.add_argument("--many", type=int, default=1000, help="KimiDeployments per scale run")
    ap.add_argument("--namespaces", type=int, default=10, help="namespaces the first scale run spreads over")
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
        cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD))
        cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/kimideployments.kimi-operator.dev")
        op.start()
        results["latency"] = lat = latency_run(b, args.n)

        time.sleep(5)
        w0, r0, g0, l0 = op.writes(), op.reconciles(), op.reads("get"), op.reads("list")
        time.sleep(args.idle_seconds)
        w1, r1, g1, l1 = op.writes(), op.reconciles(), op.reads("get"), op.reads("list")
        minutes = args.idle_seconds / 60
        results["idle"] = idle = {
            "kimideployments": args.n,
            "seconds": args.idle_seconds,
            "writes": w1 - w0,
            "writes_per_kd_per_minute": round((w1 - w0) / args.n / minutes, 3),
            "reconciles": r1 - r0,
            "gets": g1 - g0,
            "lists": l1 - l0,
            "reads_per_kd_per_minute": round((g1 - g0 + l1 - l0) / args.n / minutes, 3),
        }

        rss0 = op.rss_kib()
        spread = [f"bench-s{i}" for i in range(args.namespaces)]
        for ns in spread:
            b.namespace(ns)
        items = [(spread[i % len(spread)], f"s-{i}") for i in range(args.many)]
        results["across_namespaces"] = across = scale_run(b, op, items, None)
        across["operator_rss_mib_before"] = round(rss0 / 1024, 1)
        b.namespace("bench-one")
        b.namespace("bench-lone")
        one = [("bench-one", f"m-{i}") for i in range(args.many)]
        results["one_namespace"] = single = scale_run(b, op, one, ("bench-lone", "lone"))
        print(json.dumps(results, indent=2))

        def line(what: str, d: dict[str, float]) -> str:
            return f"{what} p50 {d['p50_ms']:.1f} ms, p95 {d['p95_ms']:.1f} ms"

        print()
        print(
            "; ".join(
                [
                    line("create->first child", lat["create_to_first_child"]),
                    line("->first stage", lat["create_to_first_stage"]),
                    line("weights complete->serving Deployment", lat["weights_complete_to_serving_deployment"]),
                    line("create->Ready", lat["create_to_ready"]),
                ]
            )
        )
        print(
            f"idle over {args.idle_seconds} s for {args.n} KDs: {idle['writes']:.0f} writes, {idle['reconciles']:.0f} "
            f"reconciles, {idle['gets']:.0f} GET + {idle['lists']:.0f} LIST = {idle['reads_per_kd_per_minute']} "
            "reads per KD per minute"
        )
        for what, r in (("across namespaces", across), ("in one namespace", single)):
            print(
                f"{r['kimideployments']} KDs created at once {what} ({r['namespaces']} ns): first Ready after "
                f"{r['first_ready_after_s']} s, all after {r['all_ready_after_s']} s; "
                f"{r['api_reads_per_kd']} reads + {r['api_writes_per_kd']} writes per KD; operator CPU "
                f"{r['operator_cpu_s']} s, RSS {r['operator_rss_mib']} MiB"
                + (
                    f"; one KD in another namespace behind them: Ready after {r['other_namespace_ready_after_s']} s"
                    if r.get("other_namespace_ready_after_s") is not None
                    else ""
                )
            )
        (log_dir / "bench.json").write_text(json.dumps(results, indent=2))
        print(f"results and the operator's log: {log_dir}")
    finally:
        op.stop()
        hub.stop()
        cluster.stop(remove=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
