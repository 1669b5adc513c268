//go:build tools

// Package tools pins controller-gen, which generates deepcopy functions and
// CRD manifests from api/v1alpha1.
package tools

import _ "sigs.k8s.io/controller-tools/cmd/controller-gen"
