"""Benchmark (numbers, not pass/fail): the fetch Job's pod on the test bed's REAL node, unthrottled.

The operator's own fetch Job (render.fetch_job, as the operator would create it, without an owner) runs
`kimi-operator fetch` in the operator image on the real node, against the Hub stand-in (a TEST DOUBLE on the host,
at the bridge address) serving a generated checkpoint, into a hostPath volume. Prints the bytes, the fetcher's own
download time (from its log: the space check to "complete and verified"), the throughput, and the pod's life.

    make cluster-up   # or: python -m kimi_testbed.cluster up --name X --real-node
    PYTHONPATH=hack:operator .venv/bin/python hack/bench_fetch_pod.py --kubeconfig .cluster/X/kubeconfig \\
        --shards 16 --shard-mb 64
"""

from __future__ import annotations

import argparse
import secrets
import shutil
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from kubernetes import client

from kimi_operator import planner, render
from kimi_operator.api.models import KimiDeploymentSpec
from kimi_operator.config import OperatorConfig
from kimi_testbed.cluster import Cluster
from kimi_testbed.hub import HubStandIn, RepoLayout
from kimi_testbed.realnode import REAL_TAINT, NodeHandle
from kimi_testbed.storage import HOSTPATH_ROOT, node_local_dir, node_local_pv
from kimi_testbed.wait import NotYet, wait_for

MIB = 1 << 20


def _stamp(line: str) -> float:
    return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kubeconfig", required=True, type=Path)
    parser.add_argument("--shards", type=int, default=16)
    parser.add_argument("--shard-mb", type=int, default=64)
    args = parser.parse_args()

    cluster = Cluster.from_kubeconfig(args.kubeconfig)
    if cluster is None or cluster.real_node is None:
        raise SystemExit(f"no cluster with a real node answers at {args.kubeconfig}")
    node = NodeHandle(cluster.real_node)
    image = node.ensure_image("operator")
    repo = "moonshotai/Kimi-K2.5"
    hub = HubStandIn(
        RepoLayout(repo_id=repo, shards=args.shards, shard_bytes=args.shard_mb * MIB, decoys=False),
        host=node.node_ip,
        public_host=node.node_ip,
    ).start()
    api = cluster.api_client()
    core: Any = client.CoreV1Api(api)
    batch: Any = client.BatchV1Api(api)
    ns = f"bench-fetch-{secrets.token_hex(3)}"
    core.create_namespace({"metadata": {"name": ns}})
    try:
        toleration = {"key": REAL_TAINT["key"], "operator": "Equal", "value": REAL_TAINT["value"]}
        spec = KimiDeploymentSpec.model_validate(
            {"topology": {"tolerations": [{**toleration, "effect": "NoSchedule"}]}}
        )
        config = OperatorConfig(operator_image=image, hf_endpoint=hub.endpoint)
        plan = render.pin(planner.plan(spec), spec, config, commit=hub.commit("main"))
        ctx = render.context(render.Owner("bench", ns, "none"), spec, plan, config)
        ctx["owner_refs"] = []
        job = render.fetch_job(ctx)
        path = node_local_dir(ns, "bench-weights", render.FETCH_UID)
        pv = node_local_pv(ns, "bench-weights", {"kimi-testbed.dev/node-kind": "real"}, path)
        core.create_persistent_volume(pv)
        core.create_namespaced_persistent_volume_claim(ns, render.pvc(ctx))
        t0 = time.time()
        batch.create_namespaced_job(ns, job)

        def complete() -> Any:
            j = batch.read_namespaced_job(job["metadata"]["name"], ns)
            if j.status.succeeded:
                return j
            if j.status.failed:
                raise SystemExit(f"the fetch Job failed: {j.status}")
            return NotYet(j.status)

        wait_for(complete, 1800, "the fetch Job to complete", interval=0.5)
        t_done = time.time()
        (pod,) = core.list_namespaced_pod(ns, label_selector="app.kubernetes.io/component=fetch").items
        text = core.read_namespaced_pod_log(pod.metadata.name, ns, container="fetch")
        lines = text.splitlines()
        start = next(line for line in lines if " INFO space: " in line)
        end = next(line for line in lines if "complete and verified" in line)
        seconds = _stamp(end) - _stamp(start)
        total = sum(f.size for f in hub.files("main").values() if f.name.endswith((".safetensors", ".model")))
        term = pod.status.container_statuses[0].state.terminated
        print(f"checkpoint: {args.shards} x {args.shard_mb} MiB shards + configs, {total / 1e6:.0f} MB (LFS files)")
        print(f"fetcher (download + hash + fsync, its log): {seconds:.2f} s, {total / seconds / 1e6:.0f} MB/s")
        print(f"container ran {(term.finished_at - term.started_at).total_seconds():.0f} s (1 s resolution)")
        print(f"Job created -> Job Complete (pod scheduled, started, fetched, exited): {t_done - t0:.1f} s")
        print(f"bytes served by the Hub stand-in: {sum(hub.served_bytes.values())}")
    finally:
        core.delete_namespace(ns)
        hub.stop()
        wait_for(lambda: not core.list_namespaced_pod(ns).items, 120, "the bench pods to go")
        core.delete_persistent_volume(f"{ns}-bench-weights")
        shutil.rmtree(HOSTPATH_ROOT / ns, ignore_errors=True)
        api.close()  # type: ignore[no-untyped-call]
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
