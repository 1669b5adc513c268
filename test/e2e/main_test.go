// Package e2e holds backbone's end-to-end tests: several real clusters,
// real controller and gateway processes, real mTLS, in a private network
// namespace.
package e2e

import (
	"testing"

	"github.com/backbone-mesh/backbone/internal/testenv"
)

func TestMain(m *testing.M) { testenv.RunInNetns(m) }
