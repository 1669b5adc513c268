//go:build tools

// Package tools pins the etcd version the test clusters run.
package tools

import _ "go.etcd.io/etcd/server/v3"
