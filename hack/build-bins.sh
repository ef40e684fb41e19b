#!/usr/bin/env bash
# Build the local control plane's binaries from the Go module proxy, at the versions pinned in
# hack/versions.env, into a cache outside the repo. Prints the bin directory on its last line.
#
#   kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet <- k8s.io/kubernetes (wrapper module)
#   etcd                                                           <- go.etcd.io/etcd/server/v3 (wrapper module)
#   kwok, helm                                                     <- go install
#   lws-controller                                                 <- sigs.k8s.io/lws/cmd (wrapper module)
#   lws-manifests/ (CRD + webhook manifests)                       <- sigs.k8s.io/lws module zip
#   kwok-stages/ (kwok's default node and pod Stages)             <- sigs.k8s.io/kwok module zip
#   versions.env (a copy: kimi_testbed refuses a stale bin dir)
#   kimi-device-plugin (+ .src: hash of its source)                <- hack/deviceplugin (our own, for the real node)
#
# A rebuild happens only when a pinned version (or the Go version) changes; the device plugin is rebuilt alone
# when its own source changes (it is keyed on that, not on the cache key).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=/dev/null
source "$HERE/versions.env"

CACHE_ROOT=${KIMI_CACHE_DIR:-$HOME/.cache/kimi-operator}
GO_VERSION=$(go env GOVERSION)
KEY=$( (cat "$HERE/versions.env"; echo "$GO_VERSION"; echo "recipe=3") | sha256sum | cut -c1-12)
BIN="$CACHE_ROOT/bin/$KEY"
WORK="$CACHE_ROOT/build/$KEY"
export GOTOOLCHAIN=local GOFLAGS=-mod=mod CGO_ENABLED=0
mkdir -p "$BIN" "$WORK"

log() { echo "[build-bins $(date +%H:%M:%S)] $*" >&2; }
have() { [ -x "$BIN/$1" ]; }
timed() { local name=$1; shift; local t0=$SECONDS; "$@"; log "$name built in $((SECONDS - t0)) s"; }

build_kubernetes() {
  local v=$KUBERNETES_VERSION minor staging
  minor=$(echo "$v" | cut -d. -f2)
  local d="$WORK/kubernetes"
  mkdir -p "$d"
  # The upstream go.mod points every staging module at ./staging; Go ignores replaces in a dependency,
  # so we replace each with the matching v0.X.Y release (the list comes from the upstream go.mod itself).
  local gomod
  gomod=$(go mod download -json "k8s.io/kubernetes@$v" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
  staging=$(grep -oE '^\s*k8s.io/[a-z0-9-]+ => ./staging' "$gomod" | awk '{print $1}' | sort -u)
  {
    echo "module kimi-operator.dev/hack/kubernetes"
    echo
    echo "go 1.26.0"
    echo
    grep -E '^godebug ' "$gomod" || true
    echo
    echo "require k8s.io/kubernetes $v"
    echo
    echo "replace ("
    for m in $staging; do echo "	$m => $m v0.$minor.${v##*.}"; done
    echo ")"
  } > "$d/go.mod"
  cat > "$d/tools.go" <<'GO'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubelet"
	_ "k8s.io/kubectl/pkg/cmd"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
GO
  (cd "$d" && go mod tidy -e >/dev/null 2>&1 || true)
  local ld="-s -w -X k8s.io/component-base/version.gitVersion=$v -X k8s.io/component-base/version.gitMajor=1"
  ld="$ld -X k8s.io/component-base/version.gitMinor=$minor -X k8s.io/component-base/version.gitTreeState=clean"
  ld="$ld -X k8s.io/client-go/pkg/version.gitVersion=$v -X k8s.io/client-go/pkg/version.gitMajor=1"
  ld="$ld -X k8s.io/client-go/pkg/version.gitMinor=$minor"
  (cd "$d" && go build -trimpath -tags selinux,notest -ldflags "$ld" -o "$BIN/" \
    k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl k8s.io/kubernetes/cmd/kubelet)
}

build_etcd() {
  local d="$WORK/etcd"
  mkdir -p "$d"
  cat > "$d/go.mod" <<GOMOD
module kimi-operator.dev/hack/etcd

go 1.26.0
GOMOD
  (cd "$d" && go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION" >/dev/null 2>&1 \
    && go build -trimpath -ldflags "-s -w" -o "$BIN/etcd" go.etcd.io/etcd/server/v3)
}

# `go install sigs.k8s.io/lws/cmd@vX` fails on the proxy: it also asks for sigs.k8s.io/lws/@v/list (to check for
# deprecation), which proxy.golang.org refuses with 403. A wrapper module that requires the exact version needs
# only that version's .mod and .zip.
build_lws() {
  local d="$WORK/lws"
  mkdir -p "$d"
  cat > "$d/go.mod" <<GOMOD
module kimi-operator.dev/hack/lws

go 1.26.0

require sigs.k8s.io/lws $LWS_VERSION
GOMOD
  (cd "$d" && go build -trimpath -ldflags "-s -w -X sigs.k8s.io/lws/pkg/version.GitVersion=$LWS_VERSION" \
    -o "$BIN/lws-controller" sigs.k8s.io/lws/cmd)
}

go_install() {  # name module-path version out-name
  local pkg=$1 ver=$2 out=$3 tmp
  tmp=$(mktemp -d)
  GOBIN=$tmp go install -trimpath -ldflags "-s -w" "$pkg@$ver"
  mv "$tmp"/* "$BIN/$out"
  rmdir "$tmp"
}

# The standalone kwok binary has no built-in Stages (kwokctl embeds them); we hand it kwok's own defaults,
# taken from the same module version: node-initialize, node-heartbeat-with-lease, pod-ready, pod-complete
# (Job pods -> Succeeded), pod-delete.
kwok_stages() {
  local dir
  dir=$(go mod download -json "sigs.k8s.io/kwok@$KWOK_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
  mkdir -p "$BIN/kwok-stages"
  cp "$dir/kustomize/stage/node/fast/node-initialize.yaml" \
    "$dir/kustomize/stage/node/heartbeat-with-lease/node-heartbeat-with-lease.yaml" \
    "$dir/kustomize/stage/pod/fast/pod-ready.yaml" \
    "$dir/kustomize/stage/pod/fast/pod-complete.yaml" \
    "$dir/kustomize/stage/pod/fast/pod-delete.yaml" "$BIN/kwok-stages/"
  chmod -R u+w "$BIN/kwok-stages"
}

# The real node's device plugin (hack/deviceplugin) is our own code: keyed on a hash of its source (the same
# hash kimi_testbed.realnode checks), so editing it rebuilds only it, never the Kubernetes binaries.
DP_SRC="$HERE/deviceplugin"
DP_HASH=$(cd "$DP_SRC" && LC_ALL=C cat go.mod go.sum *.go | sha256sum | cut -c1-16)
build_deviceplugin() {
  (cd "$DP_SRC" && go build -trimpath -ldflags "-s -w" -o "$BIN/kimi-device-plugin" .)
  echo "$DP_HASH" > "$BIN/kimi-device-plugin.src"
}

lws_manifests() {
  local dir
  dir=$(go mod download -json "sigs.k8s.io/lws@$LWS_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
  mkdir -p "$BIN/lws-manifests"
  cp "$dir/config/crd/bases/"*.yaml "$BIN/lws-manifests/"
  cp "$dir/config/webhook/manifests.yaml" "$BIN/lws-manifests/webhook-manifests.yaml"
  chmod -R u+w "$BIN/lws-manifests"
}

have kube-apiserver && have kube-controller-manager && have kube-scheduler && have kubectl && have kubelet \
  || timed kubernetes build_kubernetes
have etcd || timed etcd build_etcd
have kwok || timed kwok go_install sigs.k8s.io/kwok/cmd/kwok "$KWOK_VERSION" kwok
have lws-controller || timed lws build_lws
have helm || timed helm go_install helm.sh/helm/v3/cmd/helm "$HELM_VERSION" helm
[ "$(cat "$BIN/kimi-device-plugin.src" 2>/dev/null)" = "$DP_HASH" ] && have kimi-device-plugin \
  || timed kimi-device-plugin build_deviceplugin
[ -d "$BIN/lws-manifests" ] || lws_manifests
[ -d "$BIN/kwok-stages" ] || kwok_stages
cp "$HERE/versions.env" "$BIN/versions.env"
ln -sfn "$BIN" "$CACHE_ROOT/bin/current"
echo "$BIN"
