"""The weights fetch Job for real: `kimi-operator fetch` in the operator image, on the test bed's REAL node.

Node kind: every test here needs the real node (``real_node`` fixture, ``real_node`` marker). Real: the operator
(run on the host, as `kimi-operator run`, against the cluster), the Job and its pod (the operator image `make
images` built, non-root 65532, no API credentials), the kubelet, containerd, runc, a hostPath volume on this
machine, the pod network, the pods/log path the operator reads progress through, and the serving pod that mounts
what the fetcher wrote. Simulated: the Hugging Face Hub (kimi_testbed.hub, a TEST DOUBLE serving a generated
checkpoint on the host at the real node's bridge address, throttled where a test watches progress) and SGLang
(the standin-engine image, a TEST DOUBLE).
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from kimi_operator import render, weights
from kimi_testbed.hub import HubStandIn
from kimi_testbed.realnode import NodeHandle
from kimi_testbed.storage import node_local_dir, node_local_pv
from kimi_testbed.wait import NotYet, wait_for

from . import realbed
from .realbed import FETCH_UID, MIB, REAL, REPO, spec, volume
from .support import Env, kd

pytestmark = [pytest.mark.cluster, pytest.mark.real_node]

# the real node's fixtures (tests/cluster/realbed.py), found by pytest under these names
node_hub, fresh_hub, fetch_operator, env = realbed.node_hub, realbed.fresh_hub, realbed.fetch_operator, realbed.env
RATE = 1.5e6  # bytes/s where a test watches the download: ~35 s for the ~52 MB checkpoint


def log(message: str) -> None:
    print(f"[real-fetch] {message}", flush=True)


def snapshot(root: Path, hub: HubStandIn, repo: str = REPO) -> Path:
    return Path(weights.snapshot_dir(str(root), repo, hub.commit("main", repo)))


def wanted(hub: HubStandIn) -> dict[str, Any]:
    return {n: f for n, f in hub.files("main").items() if weights.wanted(n)}


def sha256(path: Path) -> str:
    return weights.sha256_file(path)


def weights_column(env: Env, name: str) -> str:
    """The WEIGHTS column of `kubectl get kd` (the printer column a user watches); kubectl aligns columns, and an
    empty one (QUEUE without an autoscaler) is blank, so the value is read at the header's offset."""
    header, row = env.kubectl.run("get", "kd", name, "-n", env.ns).stdout.splitlines()[:2]
    at = header.index("WEIGHTS")
    return (row[at:].split() or [""])[0]


def fetch_pods(env: Env, name: str) -> list[dict[str, Any]]:
    return env.items("Pod", f"{render.INSTANCE_LABEL}={name},{render.COMPONENT_LABEL}=fetch")


def running_fetch_pod(env: Env, name: str) -> dict[str, Any] | NotYet:
    pods = fetch_pods(env, name)
    running = [p for p in pods if p["status"].get("phase") == "Running" and not p["metadata"].get("deletionTimestamp")]
    return running[-1] if running else NotYet([(p["metadata"]["name"], p["status"].get("phase")) for p in pods])


def pod_logs(env: Env, pod: str) -> str:
    return env.kubectl.run("logs", "-n", env.ns, pod, "-c", "fetch").stdout


def weights_status(env: Env, name: str) -> dict[str, Any]:
    w: dict[str, Any] = (env.get(name).get("status") or {}).get("weights") or {}
    return w


def state_records(snap: Path) -> dict[str, Any]:
    """Files the fetcher has verified so far (its own bookkeeping on the volume), read from the host."""
    try:
        data = json.loads((snap / weights.STATE_DIR / "state.json").read_text())
    except (OSError, ValueError):
        return {}
    files: dict[str, Any] = data.get("files") or {}
    return files


def partials(snap: Path) -> dict[str, int]:
    base = snap / weights.STATE_DIR / "partial"
    return {str(p.relative_to(base))[: -len(".part")]: p.stat().st_size for p in base.rglob("*.part")}


def assert_volume_equals_hub(root: Path, hub: HubStandIn) -> Path:
    snap = snapshot(root, hub)
    files = wanted(hub)
    for name, f in files.items():
        path = snap / name
        assert path.stat().st_size == f.size, name
        assert sha256(path) == f.sha256, f"{name} on the volume differs from the Hub stand-in's"
        assert path.stat().st_uid == FETCH_UID, f"{name} was written by uid {path.stat().st_uid}"
    on_disk = {str(p.relative_to(snap)) for p in snap.rglob("*") if p.is_file() and ".kimi-operator" not in p.parts}
    assert on_disk - set(files) == {weights.MANIFEST_NAME}, "decoys (.bin, .pth, original/) are never fetched"
    assert not weights.validate_manifest(snap, check_hashes=True)
    return snap


def wait_fetch_failed(env: Env, name: str, timeout: float = 120) -> dict[str, Any]:
    return env.wait_condition(name, "WeightsReady", "False", "FetchFailed", timeout=timeout)


# ------------------------------------------------------------------------------------------------ tests
def test_weights_climb_while_bytes_land_and_the_engine_mounts_what_the_fetcher_wrote(
    env: Env, fresh_hub: HubStandIn, real_node: NodeHandle, images: dict[str, str]
) -> None:
    hub = fresh_hub
    hub.throttle(RATE)
    root = volume(env, "climb-weights")
    t0 = time.monotonic()
    env.apply(kd("climb", **spec()))
    seen: list[tuple[float, str, str, int]] = []  # (t, status progress, WEIGHTS column, bytesDone)
    logs: dict[str, str] = {}
    pods_seen: list[dict[str, Any]] = []

    def watch() -> bool | NotYet:
        w = weights_status(env, "climb")
        column = weights_column(env, "climb")
        seen.append((time.monotonic() - t0, str(w.get("progress", "")), column, int(w.get("bytesDone") or 0)))
        pod = running_fetch_pod(env, "climb")
        if isinstance(pod, dict):  # the latest log while it runs (the Job and its pod go once it is recorded)
            pods_seen[:] = [pod]
            logs[pod["metadata"]["name"]] = pod_logs(env, pod["metadata"]["name"])
        ready = env.condition("climb", "WeightsReady") or {}
        return ready.get("status") == "True" or NotYet(seen[-3:])

    wait_for(watch, 300, "WeightsReady=True while watching status.weights and the WEIGHTS column", interval=1.0)
    t_weights = time.monotonic() - t0
    percents = [int(p[:-1]) for _, p, _, _ in seen if p.endswith("%")]
    columns = [int(c[:-1]) for _, _, c, _ in seen if c.endswith("%")]
    log(f"status.weights.progress seen: {sorted(set(percents))}; WEIGHTS column seen: {sorted(set(columns))}")
    assert any(0 < p < 100 for p in percents), f"no intermediate percentage in status.weights: {seen}"
    assert any(0 < c < 100 for c in columns), f"no intermediate percentage in the WEIGHTS column: {seen}"
    assert percents == sorted(percents), f"progress went backwards: {percents}"
    done = [b for _, _, _, b in seen if b]
    assert done == sorted(done) and len(set(done)) >= 2, f"bytesDone did not climb: {done}"
    assert weights_status(env, "climb")["progress"] == "100%"

    # kubectl logs of the fetch pod: its own output (people's lines and the progress lines the operator reads)
    assert logs, "never caught the fetch pod's log while it ran"
    (text,) = logs.values()
    commit = hub.commit("main")
    assert "kimi-operator" in text and " fetch: " in text and f"resolved {REPO}@{commit} -> commit {commit}" in text
    assert "downloading: " in text and "MB/s" in text
    assert weights.progress_from_log(text) is not None

    # the fetch pod ran the operator image as 65532, with no API credentials, on the real node
    pod = pods_seen[0]
    assert pod["spec"]["nodeName"] == real_node.name
    assert pod["spec"]["containers"][0]["image"] == images["operator"]
    assert pod["spec"]["automountServiceAccountToken"] is False
    assert not any("serviceAccountToken" in json.dumps(v) for v in pod["spec"].get("volumes") or [])
    assert pod["spec"]["securityContext"]["runAsUser"] == FETCH_UID

    snap = assert_volume_equals_hub(root, hub)
    total = sum(f.size for f in wanted(hub).values())
    assert sum(hub.served_bytes.values()) == total, "every byte was served exactly once"

    env.wait_condition("climb", "Ready", "True", "Ready", timeout=180)
    t_ready = time.monotonic() - t0
    log(
        f"{total / 1e6:.1f} MB at {RATE / 1e6:.1f} MB/s (throttled): WeightsReady after {t_weights:.0f}s, "
        f"Ready after {t_ready:.0f}s from kubectl apply"
    )

    # the serving pod (stand-in engine image) on the real node reads what the fetcher wrote
    (server,) = env.items("Pod", render.engine_pods_selector("climb"))
    assert server["spec"]["nodeName"] == real_node.name
    model_path = f"/models/{REPO}/{hub.commit('main')}"
    shard = sorted(n for n in wanted(hub) if n.endswith(".safetensors"))[-1]
    out = env.kubectl.run(
        "exec",
        "-n",
        env.ns,
        server["metadata"]["name"],
        "--",
        "sha256sum",
        f"{model_path}/{shard}",
        f"{model_path}/config.json",
    ).stdout
    sums = {line.split()[1].rsplit("/", 1)[1]: line.split()[0] for line in out.splitlines()}
    assert sums == {shard: wanted(hub)[shard].sha256, "config.json": sha256(snap / "config.json")}


def test_a_killed_fetch_pod_resumes_without_downloading_finished_files_again(
    env: Env, fresh_hub: HubStandIn, kube_api: client.ApiClient
) -> None:
    hub = fresh_hub
    hub.throttle(2e6)
    root = volume(env, "resume-weights")
    env.apply(kd("resume", **spec()))
    snap = snapshot(root, hub)
    shards = {n for n in wanted(hub) if n.endswith(".safetensors")}

    def midway() -> tuple[dict[str, Any], dict[str, int]] | NotYet:
        done, part = state_records(snap), partials(snap)
        in_flight = {n: s for n, s in part.items() if s >= MIB and n not in done}
        if len(shards & set(done)) >= 4 and in_flight:
            return done, in_flight
        return NotYet({"verified": sorted(done), "partial": part})

    done, in_flight = wait_for(midway, 240, "some shards verified and others half-way on the volume", interval=0.1)
    pod = running_fetch_pod(env, "resume")
    assert isinstance(pod, dict), pod
    killed = pod["metadata"]["name"]
    client.CoreV1Api(kube_api).delete_namespaced_pod(killed, env.ns, grace_period_seconds=0)  # SIGKILL, now
    log(f"killed {killed} with {len(shards & set(done))} shards verified, in flight: {in_flight}")

    env.wait_condition("resume", "WeightsReady", "True", "Downloaded", timeout=300)
    assert_volume_equals_hub(root, hub)
    served = hub.served_bytes
    sizes = {n: f.size for n, f in wanted(hub).items()}
    again = {n: served[n] - sizes[n] for n in done if served[n] != sizes[n]}
    assert not again, f"finished files were downloaded again: {again} extra bytes"
    for name, had in in_flight.items():
        # resumed from the partial file: the bytes on the volume at the kill are not served again (only what was
        # in flight on the wire and never written); a restart from zero would serve size + had
        assert served[name] < sizes[name] + had, f"{name}: served {served[name]}, size {sizes[name]}, had {had}"
    total, extra = sum(sizes.values()), sum(served.values()) - sum(sizes.values())
    missing = sum(sizes[n] - s for n, s in in_flight.items()) + sum(
        sizes[n] for n in sizes if n not in done and n not in in_flight
    )
    log(
        f"resume: {extra} bytes ({extra / MIB:.2f} MiB) served twice of {total} ({total / 1e6:.1f} MB); "
        f"{len(in_flight)} partial files resumed; ~{missing / 1e6:.1f} MB were missing at the kill"
    )


def test_a_corrupted_shard_on_the_volume_is_detected_and_fetched_again(env: Env, fresh_hub: HubStandIn) -> None:
    hub = fresh_hub
    root = volume(env, "corrupt-weights")
    t0 = time.monotonic()
    env.apply(kd("corrupt", **spec()))
    env.wait_condition("corrupt", "WeightsReady", "True", "Downloaded", timeout=180)
    took = time.monotonic() - t0
    snap = assert_volume_equals_hub(root, hub)
    total = sum(f.size for f in wanted(hub).values())
    log(f"unthrottled: {total / 1e6:.1f} MB on the volume {took:.1f}s after kubectl apply (Job, pod start, fetch)")

    shard = sorted(n for n in wanted(hub) if n.endswith(".safetensors"))[2]
    with (snap / shard).open("r+b") as f:  # a few flipped bytes in the middle: the size stays the same
        f.seek(wanted(hub)[shard].size // 2)
        f.write(b"\x00corrupt\x00")
    # what any later write does to a file: its mtime moves on (made certain, not left to the clock's granularity)
    st = (snap / shard).stat()
    os.utime(snap / shard, ns=(st.st_atime_ns, st.st_mtime_ns + 10**10))
    assert sha256(snap / shard) != wanted(hub)[shard].sha256

    # The deployment is deleted and re-created (the volume is retained): its fetch Job checks what is there.
    env.run("delete", "kd", "corrupt", "--wait=true")
    wait_for(lambda: not env.names("Job") or NotYet(env.names("Job")), 60, "the old fetch Job to be gone")
    hub.reset_stats()
    env.apply(kd("corrupt", **spec()))
    env.wait_condition("corrupt", "WeightsReady", "True", "Downloaded", timeout=180)
    assert dict(hub.served_bytes) == {shard: wanted(hub)[shard].size}, "only the corrupted shard is fetched again"
    assert_volume_equals_hub(root, hub)


@pytest.fixture
def small_volume(env: Env) -> Iterator[Path]:
    """A 16 MiB file system (tmpfs) behind the claim: the ~52 MB checkpoint does not fit."""
    path = node_local_dir(env.ns, "small-weights", FETCH_UID)
    opts = f"size=16m,uid={FETCH_UID},gid={FETCH_UID},mode=0755"
    subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "kimi-testbed-small", str(path)], check=True)
    try:
        env.kubectl.apply(node_local_pv(env.ns, "small-weights", REAL, path))
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_a_volume_too_small_fails_at_once_with_a_clear_condition(
    env: Env, fresh_hub: HubStandIn, small_volume: Path
) -> None:
    env.apply(kd("small", **spec()))
    cond = wait_fetch_failed(env, "small")
    assert "not enough space" in cond["message"] and "PodFailurePolicy" in cond["message"], cond
    assert "will not pass on a retry" in cond["message"]
    assert (env.condition("small", "Ready") or {}).get("reason") == "FetchFailed"
    pods = fetch_pods(env, "small")
    assert len(pods) == 1, "exit 3 fails the Job at once: no second pod"
    assert pods[0]["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 3
    assert "not enough space" in pod_logs(env, pods[0]["metadata"]["name"])
    assert sum(fresh_hub.served_bytes.values()) == 0, "not one byte before the space check"
    assert env.names("Deployment") == set()


@pytest.mark.parametrize("case", ["bad-token", "missing-repo"])
def test_a_bad_token_or_a_missing_repo_fails_at_once_without_retries(
    env: Env, fresh_hub: HubStandIn, case: str
) -> None:
    volume(env, "bad-weights")
    if case == "bad-token":
        fresh_hub.token = "hf_the-right-token"
        secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "hf"}}
        env.apply({**secret, "stringData": {"token": "hf_a-wrong-token-4242"}})
        env.apply(kd("bad", **spec(model={"repo": REPO, "tokenSecretRef": {"name": "hf", "key": "token"}})))
        expected = "rejected"
    else:
        env.apply(kd("bad", **spec(model={"repo": "moonshotai/Kimi-K2-Thinking"})))  # the stand-in does not serve it
        expected = "repo not found"
    cond = wait_fetch_failed(env, "bad")
    assert expected in cond["message"] and "exit 2" in cond["message"], cond
    assert "hf_a-wrong-token-4242" not in json.dumps(env.get("bad"))
    pods = fetch_pods(env, "bad")
    assert len(pods) == 1, "exit 2 fails the Job at once: no retries"
    text = pod_logs(env, pods[0]["metadata"]["name"])
    assert expected in text and "hf_a-wrong-token-4242" not in text
    assert sum(fresh_hub.served_bytes.values()) == 0


def engine_pods(env: Env, name: str) -> list[dict[str, Any]]:
    return [
        p for p in env.items("Pod", render.engine_pods_selector(name)) if not p["metadata"].get("deletionTimestamp")
    ]


def weights_check(pod: dict[str, Any]) -> dict[str, Any]:
    """The weights-check init container's status in a serving pod."""
    statuses = pod.get("status", {}).get("initContainerStatuses") or []
    return next((s for s in statuses if s["name"] == "weights-check"), {})


def test_a_re_created_volume_and_an_emptied_snapshot_are_downloaded_again_before_the_engine_starts(
    env: Env, fresh_hub: HubStandIn
) -> None:
    """Issue 16, defect 1, on the real node: Ready -> scale to 0 -> delete the weights PVC -> a new empty PV binds
    -> scale to 1. The new claim has another UID: VolumeReplaced, a full download, and no engine pod until it is
    complete. Then the snapshot's manifest is removed by hand and the serving pod restarted: its weights-check init
    container refuses to start the engine, the operator answers SnapshotIncomplete with a fetch Job, and the pod
    starts once the snapshot is whole."""
    hub = fresh_hub
    total = sum(f.size for f in wanted(hub).values())
    first_root = volume(env, "again-weights")
    env.apply(kd("again", **spec()))
    env.wait_condition("again", "Ready", "True", "Ready", timeout=240)
    first_uid = weights_status(env, "again")["claimUID"]
    (pod,) = engine_pods(env, "again")
    check = weights_check(pod)
    assert check.get("state", {}).get("terminated", {}).get("exitCode") == 0, check  # it ran, on the real node
    assert sum(hub.served_bytes.values()) == total

    env.run("scale", "kd", "again", "--replicas=0")
    wait_for(lambda: not engine_pods(env, "again") or NotYet(len(engine_pods(env, "again"))), 120, "no engine pod")
    env.run("delete", "pvc", "again-weights", "--wait=true")
    env.kubectl.run("delete", "pv", f"{env.ns}-again-weights", "--wait=true")  # Released; its files stay on disk
    second_root = first_root.with_name("again-weights-2")
    second_root.mkdir()
    os.chown(second_root, FETCH_UID, FETCH_UID)
    env.kubectl.apply(node_local_pv(env.ns, "again-weights", REAL, second_root))  # a new, empty volume
    hub.reset_stats()
    env.run("scale", "kd", "again", "--replicas=1")

    early: list[str] = []
    fetched: list[str] = []

    def downloaded_again() -> dict[str, Any] | NotYet:
        w = env.condition("again", "WeightsReady") or {}
        if w.get("status") == "True":
            return w
        # while the new volume's fetch pod has not finished, no engine pod may exist (the operator scales the
        # Deployment in the reconcile that sees the Job done, just before it writes WeightsReady=True)
        busy = [p for p in fetch_pods(env, "again") if p["status"].get("phase") in ("Pending", "Running")]
        fetched.extend(p["metadata"]["name"] for p in busy)
        if busy:
            early.extend(p["metadata"]["name"] for p in engine_pods(env, "again"))
        return NotYet(w)

    cond = wait_for(downloaded_again, 240, "WeightsReady=True on the new volume", interval=0.2)
    assert cond["reason"] == "Downloaded", cond
    assert fetched, "the new volume's fetch pod was seen at work"
    assert not early, f"engine pods existed while the new volume downloaded: {sorted(set(early))}"

    # The operator saw the old claim Terminating (its record dropped there) or, had it missed that, the new claim's
    # other UID: either way a Warning said so.
    def said() -> set[tuple[str, str]] | NotYet:
        seen = env.events("again")
        return {("Warning", "VolumeTerminating"), ("Warning", "VolumeReplaced")} & set(seen) or NotYet(seen)

    wait_for(said, 30, "a Warning VolumeTerminating or VolumeReplaced Event")
    assert weights_status(env, "again")["claimUID"] not in (None, first_uid)
    assert sum(hub.served_bytes.values()) == total, "the new volume got every byte"
    assert_volume_equals_hub(second_root, hub)
    env.wait_condition("again", "Ready", "True", "Ready", timeout=240)
    (pod,) = engine_pods(env, "again")
    check = weights_check(pod)
    assert not check.get("lastState", {}).get("terminated"), f"the engine pod's check ever failed: {check}"

    # the volume loses its snapshot behind the operator's back; the serving pod restarts
    snap = snapshot(second_root, hub)
    (snap / weights.MANIFEST_NAME).unlink()
    hub.reset_stats()
    (pod,) = engine_pods(env, "again")
    env.run("delete", "pod", pod["metadata"]["name"], "--wait=false")

    # SnapshotIncomplete lasts one reconcile (the next one has made the fetch Job: Downloading): its Warning Event
    # is what stays, with the check's own message
    def said_incomplete() -> dict[str, Any] | NotYet:
        for e in env.items("Event"):
            if e.get("reason") == "SnapshotIncomplete" and e["involvedObject"].get("name") == "again":
                return e
        return NotYet(env.events("again"))

    event = wait_for(said_incomplete, 120, "a Warning SnapshotIncomplete Event")
    assert event["type"] == "Warning" and "not a complete snapshot" in event["message"], event
    env.wait_condition("again", "WeightsReady", "True", "Downloaded", timeout=180)
    assert sum(hub.served_bytes.values()) == 0, "every file was intact: the fetcher re-verified, downloaded nothing"
    assert not weights.validate_manifest(snap)
    env.wait_condition("again", "Ready", "True", "Ready", timeout=300)  # the kubelet's init-container back-off
    (pod,) = engine_pods(env, "again")
    check = weights_check(pod)
    log(f"weights-check restarts before the snapshot was whole again: {check.get('restartCount')}")
    assert check.get("state", {}).get("terminated", {}).get("exitCode") == 0, check


# -- the startup you can watch ----------------------------------------------------------------------------------
def engine_env(**values: str | int) -> list[dict[str, str]]:
    return [{"name": f"KIMI_STANDIN_{k.upper()}", "value": str(v)} for k, v in values.items()]


def startup_column(env: Env, name: str) -> str:
    out = env.run("get", "kimideployment", name, "--no-headers", "-o", "custom-columns=S:.status.state").stdout
    return out.strip()


def test_the_startup_phases_progress_and_eta_show_in_kubectl_get_and_a_stalled_load_is_reported(
    env: Env, fresh_hub: HubStandIn, real_node: NodeHandle
) -> None:
    """The stand-in engine (TEST DOUBLE) prints the pinned SGLang's own startup lines over a simulated 15 s load of 6
    shards and 8 s of graph capture; the operator reads them through pods/log from the real kubelet.

    The shard bar is printed one line per shard (KIMI_STANDIN_PROGRESS=lines): containerd writes a line to the CRI
    log only when it ends, so a bar redrawn with a carriage return, as tqdm draws SGLang's, reaches pods/log when the
    load ends (measured here: the operator saw only "Loading 100%")."""
    volume(env, "watch-weights")
    load: dict[str, str | int] = {"load_seconds": 15, "shards": 6, "capture_seconds": 8, "progress": "lines"}
    env.apply(kd("watch", **spec(engine={"env": engine_env(**load)})))
    env.wait_condition("watch", "WeightsReady", "True", timeout=180)
    seen: list[tuple[float, str, str, int | None, int | None]] = []  # (t, phase, STATUS column, percent, eta)
    t0 = time.monotonic()

    def watch() -> bool | NotYet:
        st = env.get("watch").get("status") or {}
        replicas = (st.get("startup") or {}).get("replicas") or []
        column = startup_column(env, "watch")
        if replicas:
            r = replicas[0]
            seen.append((time.monotonic() - t0, r["phase"], column, r.get("percent"), r.get("etaSeconds")))
        ready: dict[str, Any] = next((c for c in st.get("conditions") or [] if c["type"] == "Ready"), {})
        return ready.get("status") == "True" or NotYet(seen[-3:])

    wait_for(watch, 180, "Ready while watching status.startup and the STATUS column", interval=0.5)
    phases = [p for _, p, _, _, _ in seen]
    order = [p for i, p in enumerate(phases) if i == 0 or phases[i - 1] != p]
    log(f"phases seen in order: {order}; STATUS column values: {sorted({c for _, _, c, _, _ in seen})}")
    assert "LoadingWeights" in order and "CapturingGraphs" in order, seen
    assert order.index("LoadingWeights") < order.index("CapturingGraphs"), order
    assert any(c.startswith("Capturing graphs") for _, _, c, _, _ in seen), seen
    percents = [pct for _, p, _, pct, _ in seen if p == "LoadingWeights" and pct is not None]
    log(f"load percentages seen: {sorted(set(percents))}")
    assert any(0 < pct < 100 for pct in percents), f"no shard progress read from the engine's log: {seen}"
    assert any(c.startswith("Loading ") and "%" in c for _, _, c, _, _ in seen), seen
    etas = [(t, eta) for t, p, _, _, eta in seen if p == "LoadingWeights" and eta is not None]
    assert any(b[1] < a[1] for a, b in itertools.pairwise(etas)), f"the ETA never fell: {etas}"

    events = [e for e in env.items("Event") if e["involvedObject"].get("name") == "watch"]
    reasons = [e["reason"] for e in events]
    for phase in ("LoadingWeights", "CapturingGraphs"):
        assert reasons.count(phase) == 1, f"one {phase} Event per phase change: {reasons}"
    ready_events = [e["message"] for e in events if e["reason"] == "Ready" and e["message"].startswith("replica ")]
    assert len(ready_events) == 1 and "Ready after" in ready_events[0], ready_events
    history = env.get("watch")["status"]["startup"]["history"]
    (h,) = history
    took = {p["phase"]: p["seconds"] for p in h["phases"]}
    log(f"history after the first start: {took}")
    assert h["starts"] == 1 and 13 <= took["LoadingWeights"][0] <= 40 and 6 <= took["CapturingGraphs"][0] <= 20, took
    assert startup_column(env, "watch") == "Ready"

    # the same checkpoint again, its load stalling after shard 2 of 6: no progress for longer than history allows
    stalled: dict[str, str | int] = {**load, "stall_at_shard": 2}
    env.apply(kd("watch", **spec(engine={"env": engine_env(**stalled)})))
    ready = env.wait_condition("watch", "Ready", "False", "StartupStalled", timeout=240)
    log(f"stalled: {ready['message']}")
    assert "no progress in LoadingWeights" in ready["message"] and "earlier starts took at most" in ready["message"]
    assert "in LoadingWeights at 2/6 (33%)" in ready["message"], ready["message"]  # where the bar stopped
    assert startup_column(env, "watch").startswith("Stalled: Loading 33%")
    warnings = [(e["type"], e["reason"]) for e in env.items("Event") if e["involvedObject"].get("name") == "watch"]
    assert ("Warning", "StartupStalled") in warnings, warnings


# -- a misconfigured pod reaches the user ------------------------------------------------------------------------
def test_a_missing_token_secret_is_reported_at_once_and_creating_it_lets_the_download_run(env: Env) -> None:
    """The kubelet cannot start the fetch container (CreateContainerConfigError): Ready says so, naming the Secret."""
    volume(env, "nosecret-weights")
    t0 = time.monotonic()
    env.apply(kd("nosecret", **spec(model={"tokenSecretRef": {"name": "no-such-token", "key": "token"}})))
    ready = env.wait_condition("nosecret", "Ready", "False", "CreateContainerConfigError", timeout=120)
    seen_after = time.monotonic() - t0
    log(f"missing token Secret: Ready=False CreateContainerConfigError {seen_after:.1f}s after kubectl apply")
    assert 'secret "no-such-token" not found' in ready["message"], ready["message"]
    assert "will not recover by itself" in ready["message"]
    warnings = [(e["type"], e["reason"]) for e in env.items("Event") if e["involvedObject"].get("name") == "nosecret"]
    assert ("Warning", "CreateContainerConfigError") in warnings, warnings
    env.run("create", "secret", "generic", "no-such-token", "--from-literal=token=hf_testbed_token_value")
    env.wait_condition("nosecret", "WeightsReady", "True", timeout=180)


def test_an_engine_image_that_cannot_be_pulled_is_reported_and_a_fixed_image_goes_ready(
    env: Env, images: dict[str, str]
) -> None:
    """No registry is reachable from this machine: the real kubelet's pull fails (ErrImagePull, ImagePullBackOff)."""
    volume(env, "nopull-weights")
    env.apply(kd("nopull", **spec(engine={"image": "kimi-operator.local/no-such-engine:1"})))
    env.wait_condition("nopull", "WeightsReady", "True", timeout=180)
    t0 = time.monotonic()

    def pull_failed() -> dict[str, Any] | NotYet:
        ready = env.condition("nopull", "Ready") or {}
        if ready.get("reason") in ("ErrImagePull", "ImagePullBackOff"):
            return ready
        return NotYet(ready)

    ready = wait_for(pull_failed, 120, "Ready=False ErrImagePull or ImagePullBackOff for the engine pod")
    log(f"unpullable engine image: Ready=False {ready['reason']} {time.monotonic() - t0:.1f}s after WeightsReady")
    assert "kimi-operator.local/no-such-engine:1" in ready["message"], ready["message"]
    assert ready["status"] == "False"
    env.apply(kd("nopull", **spec(engine={"image": images["standin-engine"]})))
    env.wait_condition("nopull", "Ready", "True", "Ready", timeout=180)
