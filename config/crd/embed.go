// Package crd carries backbone's generated CustomResourceDefinitions into
// the binary, so `backbone install` and `backbone check` use exactly the
// CRDs this build was generated with.
package crd

import "embed"

// Bases holds bases/*.yaml, the output of `make generate`.
//
//go:embed bases/*.yaml
var Bases embed.FS
