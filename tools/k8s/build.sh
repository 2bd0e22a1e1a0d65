#!/usr/bin/env bash
# Build the test control plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
# kwok, helm) from the Go module proxy into tools/k8s/bin/. No binary downloads: every binary
# is compiled from the modules pinned by the go.mod/go.sum files beside this script.
#
# A no-op when bin/ already holds all binaries built from the same inputs (versions.env, the
# go.mod/go.sum/main.go files, this script and the Go version): the digest of those inputs is
# written to bin/.stamp after a successful build. Set FORCE=1 to rebuild anyway.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
bin="$here/bin"
# shellcheck source=versions.env
source "$here/versions.env"
# No VCS stamping: the wrapper modules sit inside this repository, whose state is not theirs.
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS="-mod=readonly -buildvcs=false"

binaries=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok helm)
# kwok's behaviour (node heartbeats, pods turning Running and Ready, deletion) comes from Stage
# objects; kwok ships them in its module, so they are taken from the same pinned version.
kwok_stages=(
  node/fast/node-initialize.yaml
  node/heartbeat-with-lease/node-heartbeat-with-lease.yaml
  pod/fast/pod-ready.yaml
  pod/fast/pod-complete.yaml
  pod/fast/pod-delete.yaml
)

inputs_digest() {
  (
    cd "$here"
    cat versions.env build.sh
    find etcd kube kwok helm -type f \( -name go.mod -o -name go.sum -o -name '*.go' \) | sort |
      xargs cat
    go version
  ) | sha256sum | cut -d' ' -f1
}

# A version in versions.env must be the one its go.mod pins, or the stamp would lie.
check_pin() {  # module-dir module-path version
  if ! grep -qE "^[[:space:]]*(require[[:space:]]+)?$2 $3( |$)" "$here/$1/go.mod"; then
    echo "build.sh: $1/go.mod does not pin $2 $3 (versions.env): update one of them" >&2
    exit 1
  fi
}
check_pin kube k8s.io/kubernetes "$KUBE_VERSION"
check_pin etcd go.etcd.io/etcd/server/v3 "$ETCD_VERSION"
check_pin kwok sigs.k8s.io/kwok "$KWOK_VERSION"
check_pin helm helm.sh/helm/v3 "$HELM_VERSION"

mkdir -p "$bin"
# Two test sessions starting at once must not build over each other.
exec 9>"$bin/.lock"
flock 9

digest="$(inputs_digest)"
all_present=1
for b in "${binaries[@]}"; do [ -x "$bin/$b" ] || all_present=0; done
[ -f "$bin/kwok-stages.yaml" ] || all_present=0
if [ "${FORCE:-0}" != 1 ] && [ "$all_present" = 1 ] && [ "$(cat "$bin/.stamp" 2>/dev/null)" = "$digest" ]; then
  echo "tools/k8s/bin is up to date (kubernetes $KUBE_VERSION, etcd $ETCD_VERSION, kwok $KWOK_VERSION, helm $HELM_VERSION)"
  exit 0
fi
rm -f "$bin/.stamp"

start=$SECONDS
build_date="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
kube_minor="$(echo "$KUBE_VERSION" | cut -d. -f2)"

# Kubernetes stamps its version through ldflags (hack/lib/version.sh); without it the binaries
# report v0.0.0-master and Helm's kubeVersion constraints fail against the test cluster.
kube_ldflags="-s -w"
for pkg in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
  kube_ldflags+=" -X $pkg.gitVersion=$KUBE_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$kube_minor"
  kube_ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=$build_date"
done

echo "building etcd $ETCD_VERSION"
(cd "$here/etcd" && go build -trimpath -ldflags "-s -w" -o "$bin/etcd" .)

echo "building kube-apiserver, kube-controller-manager, kube-scheduler $KUBE_VERSION"
(cd "$here/kube" && go build -trimpath -tags selinux,notest,grpcnotrace -ldflags "$kube_ldflags" \
  -o "$bin/" ./cmd/kube-apiserver ./cmd/kube-controller-manager ./cmd/kube-scheduler)

echo "building kwok $KWOK_VERSION"
(cd "$here/kwok" && go build -trimpath -ldflags "-s -w \
  -X sigs.k8s.io/kwok/pkg/consts.Version=${KWOK_VERSION#v} \
  -X sigs.k8s.io/kwok/pkg/consts.KubeVersion=${KUBE_VERSION#v}" \
  -o "$bin/kwok" sigs.k8s.io/kwok/cmd/kwok)
kwok_dir="$(cd "$here/kwok" && go list -m -f '{{.Dir}}' sigs.k8s.io/kwok)"
for f in "${kwok_stages[@]}"; do echo "---"; cat "$kwok_dir/kustomize/stage/$f"; done >"$bin/kwok-stages.yaml"

echo "building helm $HELM_VERSION"
# Helm's Makefile stamps its own version and the Kubernetes minor it assumes by default.
(cd "$here/helm" && go build -trimpath -ldflags "-s -w \
  -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION \
  -X helm.sh/helm/v3/internal/version.gitTreeState=clean \
  -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 \
  -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$kube_minor \
  -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 \
  -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$kube_minor" \
  -o "$bin/helm" helm.sh/helm/v3/cmd/helm)

echo "$digest" >"$bin/.stamp"
echo "built tools/k8s/bin in $((SECONDS - start)) s"
