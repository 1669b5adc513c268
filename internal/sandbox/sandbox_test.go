package sandbox

import (
	"io"
	"os"
	"path/filepath"
	"testing"
)

// recordedNetwork is a Network that only remembers its teardown.
type recordedNetwork struct {
	hostNetwork
	tornDown *bool
}

func (n recordedNetwork) Teardown() error { *n.tornDown = true; return nil }

func TestTeardownAfterAClusterFailedToStart(t *testing.T) {
	dir := t.TempDir()
	for _, sub := range scratchDirs {
		if err := os.MkdirAll(filepath.Join(dir, sub, "data"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	tornDown := false
	s := &Sandbox{
		opts: Options{Dir: dir, Progress: io.Discard},
		net:  recordedNetwork{hostNetwork: hostNetwork{ip: "192.0.2.1"}, tornDown: &tornDown},
		// startClusters leaves the entry of a cluster that failed nil.
		clusters: []*cluster{nil, nil},
		procs:    &procs{dir: dir},
	}
	s.teardown()
	if !tornDown {
		t.Errorf("the network outlived the teardown")
	}
	for _, sub := range scratchDirs {
		if _, err := os.Stat(filepath.Join(dir, sub)); err == nil {
			t.Errorf("%s outlived the teardown", sub)
		}
	}
}
