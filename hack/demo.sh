#!/usr/bin/env bash
# make demo: the chart and examples/kimi-k2.5-h200.yaml on a local control plane with a REAL node.
#
# Real: etcd, kube-apiserver, controller-manager, scheduler, the real node (kubelet + containerd + runc + CNI), the
# operator image built from images/operator/Dockerfile and installed with `helm install charts/kimi-operator`, its
# pods, the weights fetch Job's pod downloading into a hostPath volume on this machine, the serving pod mounting
# what it wrote, the kubelet's probes, the Service's endpoints.
# Simulated, and said on screen: the GPUs (a device plugin of the test bed advertises 8 nvidia.com/gpu; no GPU is
# behind them; kwok nodes beside the real node), SGLang (the standin-engine image, a TEST DOUBLE that answers like
# `python3 -m sglang.launch_server` without a model and simulates a weight load), the Hugging Face Hub (a Hub
# stand-in, a TEST DOUBLE on this machine serving a generated ~50 MB checkpoint under the example's repo id,
# throttled so the download can be watched).
#
#   make demo            run it, show the result, stop everything
#   KEEP=1 make demo     leave it running; stop later with: make demo-down
# Knobs: CLUSTER (demo), RATE_MBPS (2: Hub stand-in bandwidth), LOAD_SECONDS (15: the stand-in's simulated load).
set -euo pipefail
cd "$(dirname "$0")/.."
NAME=${CLUSTER:-demo}
PY=${PY:-.venv/bin/python}
export PYTHONPATH="$PWD/hack:$PWD/operator"
DIR=.cluster/$NAME
KCFG=$DIR/kubeconfig
EXAMPLE=${EXAMPLE:-examples/kimi-k2.5-h200.yaml}
RATE_MBPS=${RATE_MBPS:-2}
LOAD_SECONDS=${LOAD_SECONDS:-15}
OP_NS=kimi-system
REAL_LABEL=kimi-testbed.dev/node-kind

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
sim() { printf '\033[33m   [simulated] %s\033[0m\n' "$*"; }

if [ "${1:-}" = "down" ]; then
  if [ -f "$DIR/hub.pid" ]; then kill "$(cat "$DIR/hub.pid")" 2>/dev/null || true; rm -f "$DIR/hub.pid"; fi
  "$PY" -m kimi_testbed.cluster down --name "$NAME"
  rm -rf "/tmp/kimi-testbed/demo-$NAME"
  exit 0
fi

T0=$SECONDS
BIN=$(bash hack/build-bins.sh | tail -n 1)
say "0/6 host packages for the real node and the images (cached after the first run)"
bash hack/node/install.sh
"$PY" -m kimi_testbed.images build
"$PY" -m kimi_testbed.images list 2>/dev/null | sed 's/^/   /' || true

say "1/6 local control plane '$NAME' with kwok GPU nodes and one REAL node (kubelet + containerd + runc)"
"$PY" -m kimi_testbed.cluster up --name "$NAME" --real-node
k() { "$BIN/kubectl" --kubeconfig "$KCFG" "$@"; }
helm() { "$BIN/helm" --kubeconfig "$KCFG" "$@"; }

cleanup() {
  rc=$?
  if [ "${KEEP:-0}" = "1" ]; then
    say "left running. kubectl: $BIN/kubectl --kubeconfig $KCFG ; stop with: make demo-down"
    return
  fi
  say "stopping (KEEP=1 make demo leaves it running)"
  bash hack/demo.sh down >/dev/null 2>&1 || true
  exit $rc
}
trap cleanup EXIT

# the real node's address (the bridge), and the images imported into its containerd
read -r NODE_IP OP_IMAGE ENGINE_IMAGE < <("$PY" - "$KCFG" <<'PYEOF'
import sys
from pathlib import Path
from kimi_testbed.cluster import Cluster
from kimi_testbed.realnode import NodeHandle
c = Cluster.from_kubeconfig(Path(sys.argv[1]))
assert c is not None and c.real_node, "the cluster has no real node"
node = NodeHandle(c.real_node)
print(node.node_ip, node.ensure_image("operator"), node.ensure_image("standin-engine"))
PYEOF
)
k get nodes -L "$REAL_LABEL" -o custom-columns='NAME:.metadata.name,KIND:.metadata.labels.kimi-testbed\.dev/node-kind,GPUS:.status.allocatable.nvidia\.com/gpu,READY:.status.conditions[?(@.type=="Ready")].status'
sim "GPUs: nvidia.com/gpu: 8 on every node comes from a device plugin (real node) or kwok; no GPU is behind them"

say "2/6 Hub stand-in (TEST DOUBLE for huggingface.co) at $NODE_IP, throttled to $RATE_MBPS MB/s"
nohup "$PY" -m kimi_testbed.hub --repo moonshotai/Kimi-K2.5 --shards 12 --shard-mb 4 --host "$NODE_IP" \
  --bandwidth-mbps "$RATE_MBPS" >"$DIR/hub.log" 2>&1 &
echo $! >"$DIR/hub.pid"
for _ in $(seq 1 100); do grep -q '^export HF_ENDPOINT=' "$DIR/hub.log" 2>/dev/null && break; sleep 0.2; done
HF_ENDPOINT=$(sed -n 's/^export HF_ENDPOINT=//p' "$DIR/hub.log")
[ -n "$HF_ENDPOINT" ] || { cat "$DIR/hub.log"; exit 1; }
sim "Hugging Face Hub: $(head -n 1 "$DIR/hub.log") at $HF_ENDPOINT"

say "3/6 helm install charts/kimi-operator with the operator image built here ($OP_IMAGE)"
cat >"$DIR/values.yaml" <<VALUES
image: {repository: ${OP_IMAGE%:*}, tag: "${OP_IMAGE##*:}", pullPolicy: Never}  # no registry: imported into containerd
nodeSelector: {$REAL_LABEL: real}
tolerations: [{key: $REAL_LABEL, operator: Equal, value: real, effect: NoSchedule}]
# the real node has this machine's CPUs, and the fetch Job's pod requests 2 cores: the operator requests none
resources: {requests: {cpu: "0", memory: 128Mi}, limits: {cpu: "1", memory: 512Mi}}
operator:
  engineImage: $ENGINE_IMAGE  # the SGLang TEST DOUBLE
  hfEndpoint: $HF_ENDPOINT    # the Hub TEST DOUBLE
VALUES
sed 's/^/   /' "$DIR/values.yaml"
t=$SECONDS
helm install kimi-operator charts/kimi-operator -n "$OP_NS" --create-namespace -f "$DIR/values.yaml" --wait --timeout 180s
echo "operator Ready $((SECONDS - t)) s after helm install"
k get pods -n "$OP_NS" -o wide

say "4/6 kubectl apply -f $EXAMPLE (+ only the real node's toleration and label, and the stand-in's load time)"
KD_NAME=$("$PY" -c "import yaml; print(next(d for d in yaml.safe_load_all(open('$EXAMPLE')) if d)['metadata']['name'])")
# the test bed has no storage provisioner: a hostPath PersistentVolume on the real node, bound to the claim
"$PY" - "$KD_NAME" "$NAME" <<'PYEOF' | k apply -f - >/dev/null
import os, sys, yaml
from kimi_testbed import storage
from kimi_operator import render
claim = f"{sys.argv[1]}-weights"
path = storage.HOSTPATH_ROOT / f"demo-{sys.argv[2]}" / claim
path.mkdir(parents=True, exist_ok=True)
os.chown(path, render.FETCH_UID, render.FETCH_UID)
pv = storage.node_local_pv("default", claim, {"kimi-testbed.dev/node-kind": "real"}, path)
pv["metadata"]["name"] = f"demo-{claim}"
print(yaml.safe_dump(pv))
PYEOF
sim "storage: PersistentVolume demo-${KD_NAME}-weights is a hostPath directory on this machine"
"$PY" - "$EXAMPLE" "$LOAD_SECONDS" >"$DIR/example.yaml" <<'PYEOF'
import sys, yaml
obj = next(d for d in yaml.safe_load_all(open(sys.argv[1])) if d)
topo = obj["spec"].setdefault("topology", {})
topo.setdefault("tolerations", []).append(
    {"key": "kimi-testbed.dev/node-kind", "operator": "Equal", "value": "real", "effect": "NoSchedule"})
topo.setdefault("nodeSelector", {})["kimi-testbed.dev/node-kind"] = "real"
engine = obj["spec"].setdefault("engine", {})
engine.setdefault("env", []).extend([
    {"name": "KIMI_STANDIN_LOAD_SECONDS", "value": sys.argv[2]},
    {"name": "KIMI_STANDIN_CAPTURE_SECONDS", "value": "6"},
    {"name": "KIMI_STANDIN_PROGRESS", "value": "lines"},
])
print(yaml.safe_dump(obj, sort_keys=False))
PYEOF
diff <(grep -v '^#' "$EXAMPLE" | "$PY" -c 'import sys,yaml; print(yaml.safe_dump(yaml.safe_load(sys.stdin), sort_keys=False))') \
  "$DIR/example.yaml" | sed 's/^/   /' || true
T_APPLY=$SECONDS
k apply -f "$DIR/example.yaml"
sim "SGLang: the serving pod runs the standin-engine image (a TEST DOUBLE), simulating a ${LOAD_SECONDS} s weight load"
sim "  and 6 s of CUDA graph capture, printing SGLang's own startup lines (the shard bar one line per shard: SGLang's"
sim "  tqdm redraws reach the log only when the load ends); STATUS shows the phase, progress and ETA it reads"

say "5/6 kubectl get kd $KD_NAME, every 2 s: WEIGHTS climbs as bytes land on the volume, then STATUS follows the engine's start"
k get kd "$KD_NAME" | sed -n '1s/^/         /p'  # sed reads it all: head would close the pipe (SIGPIPE, exit 141 under pipefail)
last="" ready="" t_weights=""
for _ in $(seq 1 200); do
  row=$(k get kd "$KD_NAME" --no-headers 2>/dev/null || true)
  pods=$(k get pods -l app.kubernetes.io/instance="$KD_NAME" --no-headers \
    -o custom-columns='N:.metadata.name,P:.status.phase,R:.status.containerStatuses[0].ready' 2>/dev/null \
    | awk '{printf "%s %s ready=%s; ", $1, $2, $3}')
  if [ "$row$pods" != "$last" ]; then printf '%6ss  %s\n         pods: %s\n' "$((SECONDS - T_APPLY))" "$row" "$pods"; last=$row$pods; fi
  if [ -z "$t_weights" ] && [ "$(k get kd "$KD_NAME" -o jsonpath='{.status.conditions[?(@.type=="WeightsReady")].status}' 2>/dev/null)" = True ]; then
    t_weights=$((SECONDS - T_APPLY))
  fi
  ready=$(k get kd "$KD_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null || true)
  [ "$ready" = "True" ] && break
  sleep 2
done
[ "$ready" = "True" ] || { echo "not Ready after 400 s"; k logs -n "$OP_NS" -l app.kubernetes.io/component=operator --tail=30; exit 1; }
echo "WeightsReady ${t_weights:-?} s and Ready $((SECONDS - T_APPLY)) s after kubectl apply"

echo
k get deploy,pods,svc,pvc,endpointslices -l app.kubernetes.io/instance="$KD_NAME" -o wide 2>/dev/null || k get pods -o wide
POD=$(k get pods -l app.kubernetes.io/instance="$KD_NAME",app.kubernetes.io/component=server -o jsonpath='{.items[0].metadata.name}')
POD_IP=$(k get pod "$POD" -o jsonpath='{.status.podIP}')
PORT=$(k get pod "$POD" -o jsonpath='{.spec.containers[0].ports[?(@.name=="http")].containerPort}')
say "6/6 one chat completion from the serving pod $POD ($POD_IP:$PORT, on the real node)"
sim "the answer comes from the standin-engine TEST DOUBLE, not from Kimi K2.5"
curl -sf "http://$POD_IP:$PORT/v1/chat/completions" -H 'content-type: application/json' \
  -d '{"model":"moonshotai/Kimi-K2.5","messages":[{"role":"user","content":"hello"}]}' | { head -c 400; cat >/dev/null; }; echo
echo
echo "kubectl logs $POD:"; k logs "$POD" | tail -n 4 | sed 's/^/   /'
say "events"
k get events --field-selector involvedObject.kind=KimiDeployment --sort-by=.lastTimestamp | tail -8
echo "demo took $((SECONDS - T0)) s"
