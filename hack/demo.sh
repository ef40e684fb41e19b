#!/usr/bin/env bash
# make demo: a local control plane with simulated 8x H200 nodes, the CRD, the operator, and
# examples/kimi-k2.5-h200.yaml going Ready. What is simulated: the GPUs and the containers (kwok marks pods
# Running/Ready and completes the weights Job, so no bytes are downloaded), the storage (a hostPath PV pre-bound to
# the weights claim), the Hugging Face Hub (a Hub stand-in, a test double, resolves the revision to a commit) and
# SGLang itself (a stand-in engine, a test double, answers on each serving pod's IP).
# Everything else - API server, controller manager, scheduler, the operator - is real.
#
#   make demo            run it, show the result, stop everything
#   KEEP=1 make demo     leave it running; stop later with: make demo-down
set -euo pipefail
cd "$(dirname "$0")/.."
NAME=${CLUSTER:-demo}
PY=${PY:-.venv/bin/python}
export PYTHONPATH="$PWD/hack:$PWD/operator"
DIR=.cluster/$NAME
KCFG=$DIR/kubeconfig
EXAMPLE=${EXAMPLE:-examples/kimi-k2.5-h200.yaml}

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

if [ "${1:-}" = "down" ]; then
  for f in "$DIR/operator.pid" "$DIR/standin.pid" "$DIR/hub.pid"; do
    [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null || true
    rm -f "$f"
  done
  "$PY" -m kimi_testbed.cluster down --name "$NAME"
  exit 0
fi

BIN=$(bash hack/build-bins.sh | tail -n 1)
say "1/5 local control plane '$NAME' (etcd, kube-apiserver, controller-manager, scheduler, kwok, LWS)"
"$PY" -m kimi_testbed.cluster up --name "$NAME"
k() { "$BIN/kubectl" --kubeconfig "$KCFG" "$@"; }

cleanup() {
  if [ "${KEEP:-0}" = "1" ]; then
    say "left running. kubectl: $BIN/kubectl --kubeconfig $KCFG ; stop with: make demo-down"
    return
  fi
  say "stopping (KEEP=1 make demo leaves it running)"
  bash hack/demo.sh down >/dev/null 2>&1 || true
}
trap cleanup EXIT

say "2/5 CRD and simulated storage"
k apply --server-side --force-conflicts -f crds/ >/dev/null
k wait --for condition=Established --timeout=60s crd/kimideployments.kimi-operator.dev
KD_NAME=$("$PY" -c "import yaml,sys; print(next(d for d in yaml.safe_load_all(open('$EXAMPLE')) if d)['metadata']['name'])")
k apply -f - >/dev/null <<PV
apiVersion: v1
kind: PersistentVolume
metadata: {name: demo-${KD_NAME}-weights}
spec:
  capacity: {storage: 2Ti}
  accessModes: [ReadWriteMany]
  persistentVolumeReclaimPolicy: Retain
  hostPath: {path: /tmp/kimi-demo-weights}
  claimRef: {namespace: default, name: ${KD_NAME}-weights}
PV
echo "PersistentVolume demo-${KD_NAME}-weights (hostPath, simulated) pre-bound to default/${KD_NAME}-weights"

say "3/5 operator (kimi-operator run), Hub stand-in and stand-in engines (test doubles for the Hub and SGLang)"
nohup "$PY" -m kimi_testbed.hub --repo moonshotai/Kimi-K2.5 --shards 2 --shard-mb 1 >"$DIR/hub.log" 2>&1 &
echo $! >"$DIR/hub.pid"
for _ in $(seq 1 50); do grep -q '^export HF_ENDPOINT=' "$DIR/hub.log" 2>/dev/null && break; sleep 0.2; done
HF_ENDPOINT=$(sed -n 's/^export HF_ENDPOINT=//p' "$DIR/hub.log")
echo "Hub stand-in at $HF_ENDPOINT"
HF_ENDPOINT=$HF_ENDPOINT KUBECONFIG=$KCFG KIMI_METRICS_PORT=0 KIMI_RESYNC_SECONDS=10 \
  nohup "$PY" -m kimi_operator.cli run --liveness http://127.0.0.1:0/healthz >"$DIR/operator.log" 2>&1 &
echo $! >"$DIR/operator.pid"
nohup "$PY" -m kimi_testbed.harness --kubeconfig "$KCFG" --namespace default \
  --selector app.kubernetes.io/component=server --port 8000 >"$DIR/standin.log" 2>&1 &
echo $! >"$DIR/standin.pid"
echo "operator log: $DIR/operator.log   stand-in log: $DIR/standin.log"

say "4/5 kubectl apply -f $EXAMPLE"
k apply -f "$EXAMPLE"
"$PY" operator/kimi_operator/cli.py plan -f "$EXAMPLE" 2>/dev/null || .venv/bin/kimi-operator plan -f "$EXAMPLE"

say "5/5 waiting for Ready (kubectl get kd)"
last=""
for _ in $(seq 1 150); do
  line=$(k get kd "$KD_NAME" --no-headers 2>/dev/null || true)
  if [ "$line" != "$last" ]; then k get kd "$KD_NAME" -o wide 2>/dev/null | sed -n "$([ -z "$last" ] && echo 1,2p || echo 2p)"; last=$line; fi
  reason=$(k get kd "$KD_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null || true)
  [ "$reason" = "True" ] && break
  sleep 2
done
[ "$reason" = "True" ] || { echo "not Ready after 300 s; operator log:"; tail -30 "$DIR/operator.log"; exit 1; }

echo
k get deploy,pods,svc,pvc,pdb -l app.kubernetes.io/instance="$KD_NAME" -o wide
POD_IP=$(k get pods -l app.kubernetes.io/instance="$KD_NAME",app.kubernetes.io/component=server -o jsonpath='{.items[0].status.podIP}')
say "the serving pod's IP $POD_IP answers like SGLang (stand-in engine)"
for _ in $(seq 1 20); do curl -sf "http://$POD_IP:8000/v1/models" && break; sleep 0.5; done
echo
curl -sf "http://$POD_IP:8000/v1/chat/completions" -H 'content-type: application/json' \
  -d '{"model":"kimi-k2.5","messages":[{"role":"user","content":"hello"}]}' | head -c 400; echo
say "events"
k get events --field-selector involvedObject.kind=KimiDeployment --sort-by=.lastTimestamp | tail -8
