//go:build tools

// Package tools pins the Kubernetes version whose kube-apiserver the
// integration and end-to-end tests run against. hack/cluster-binaries.sh
// builds it from this module, kept apart from backbone's own go.mod.
package tools

import _ "k8s.io/kubernetes/cmd/kube-apiserver"
