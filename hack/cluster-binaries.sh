#!/usr/bin/env bash
# Builds the kube-apiserver and etcd binaries that backbone's integration and
# end-to-end tests (and `backbone sandbox`) run, from the Go modules pinned in
# hack/tools/k8s and hack/tools/etcd, into a cache keyed by version:
#
#   ${BACKBONE_CLUSTER_BINARIES:-${XDG_CACHE_HOME:-$HOME/.cache}/backbone/<versions>}
#
# Nothing is built when both binaries are already there, so fresh clones and
# CI reuse them. The first build takes about 12 minutes on 2 cores; progress
# is printed as packages compile. The last line of output is the directory,
# ready for KUBEBUILDER_ASSETS.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
k8s_version=$(awk '$1 == "require" && $2 == "k8s.io/kubernetes" {print $3}' "$root/hack/tools/k8s/go.mod")
etcd_version=$(awk '$1 == "require" && $2 == "go.etcd.io/etcd/server/v3" {print $3}' "$root/hack/tools/etcd/go.mod")
dir=${BACKBONE_CLUSTER_BINARIES:-${XDG_CACHE_HOME:-$HOME/.cache}/backbone/k8s-${k8s_version}-etcd-${etcd_version}}

if [[ -x "$dir/kube-apiserver" && -x "$dir/etcd" ]]; then
	echo "$dir"
	exit 0
fi
mkdir -p "$dir"

# One build at a time per cache directory.
exec 9>"$dir/.lock"
flock 9
if [[ -x "$dir/kube-apiserver" && -x "$dir/etcd" ]]; then
	echo "$dir"
	exit 0
fi

start=$SECONDS
progress() { # name, expected package count
	local n=0 name=$1 total=$2
	while read -r pkg; do
		if [[ $pkg == *" "* || $pkg == "#"* ]]; then
			echo "$pkg" >&2 # a compiler error, not a package name
			continue
		fi
		n=$((n + 1))
		if ((n % 50 == 0)); then
			printf '  %s: %d/~%d packages compiled (%ds) %s\n' "$name" "$n" "$total" $((SECONDS - start)) "$pkg" >&2
		fi
	done
}

build() { # name, module dir, package, expected package count
	local name=$1 mod=$2 pkg=$3 total=$4
	if [[ -x "$dir/$name" ]]; then
		return
	fi
	echo "building $name from $pkg ($mod) into $dir; the first build takes minutes" >&2
	(cd "$root/hack/tools/$mod" && go build -v -trimpath -ldflags=-s -o "$dir/$name.tmp" "$pkg" 2>&1) | progress "$name" "$total"
	mv "$dir/$name.tmp" "$dir/$name"
	echo "  $name built after $((SECONDS - start))s" >&2
}

build etcd etcd go.etcd.io/etcd/server/v3 400
build kube-apiserver k8s k8s.io/kubernetes/cmd/kube-apiserver 1500
echo "$dir"
