package sandbox

import (
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// owners are records of supervisors in the states the tests need: one of
// another sandbox that runs (this test's parent process stands in for
// it), one that died, and this process.
func owners(t *testing.T) (running, dead, self netnsOwner) {
	t.Helper()
	requireLinux(t)
	parent := os.Getppid()
	start, _, ok := processStart(parent)
	if !ok {
		t.Fatal("no start time for this test's parent")
	}
	exited := exec.Command("true")
	if err := exited.Run(); err != nil {
		t.Fatal(err)
	}
	selfStart, _, _ := processStart(os.Getpid())
	return netnsOwner{Dir: "/srv/sandbox-a", PID: parent, StartTime: start},
		netnsOwner{Dir: "/srv/sandbox-a", PID: exited.Process.Pid, StartTime: start},
		netnsOwner{Dir: "/srv/sandbox-b", PID: os.Getpid(), StartTime: selfStart}
}

// useOwnerFile points ownerFile at a file of the test's, holding record
// (none when nil).
func useOwnerFile(t *testing.T, record *netnsOwner) {
	t.Helper()
	old := ownerFile
	ownerFile = filepath.Join(t.TempDir(), "owner")
	t.Cleanup(func() { ownerFile = old })
	if record == nil {
		return
	}
	b, err := json.Marshal(record)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(ownerFile, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func recordedOwner(t *testing.T) *netnsOwner {
	t.Helper()
	b, err := os.ReadFile(ownerFile)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	o := &netnsOwner{}
	if err := json.Unmarshal(b, o); err != nil {
		t.Fatalf("%s: %v: %q", ownerFile, err, b)
	}
	return o
}

func TestClaimNamespace(t *testing.T) {
	running, dead, self := owners(t)
	for name, tc := range map[string]struct {
		recorded  *netnsOwner
		createErr error
		// wantErr is in the error; empty when the claim succeeds.
		wantErr     string
		wantCreated bool
		wantOwner   *netnsOwner
	}{
		"refuses while another sandbox that runs owns it, naming that sandbox's directory": {
			recorded: &running, wantErr: "/srv/sandbox-a", wantOwner: &running,
		},
		"takes over the leftovers of a sandbox whose supervisor died": {
			recorded: &dead, wantCreated: true, wantOwner: &self,
		},
		"takes a namespace nobody recorded": {
			wantCreated: true, wantOwner: &self,
		},
		"records nobody when creating the namespace fails": {
			createErr: errors.New("ip: no such device"), wantErr: "no such device", wantCreated: true,
		},
	} {
		t.Run(name, func(t *testing.T) {
			useOwnerFile(t, tc.recorded)
			created := false
			err := claimNamespace(self.Dir, func() error { created = true; return tc.createErr })
			if tc.wantErr == "" && err != nil {
				t.Fatal(err)
			}
			if tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
				t.Fatalf("error %v, want one naming %q", err, tc.wantErr)
			}
			if created != tc.wantCreated {
				t.Errorf("created the namespace: %v, want %v", created, tc.wantCreated)
			}
			if got := recordedOwner(t); !equalOwners(got, tc.wantOwner) {
				t.Errorf("recorded owner %+v, want %+v", got, tc.wantOwner)
			}
		})
	}
}

func TestReleaseNamespace(t *testing.T) {
	running, dead, self := owners(t)
	for name, tc := range map[string]struct {
		recorded    *netnsOwner
		wantRemoved bool
	}{
		"leaves the namespace of another sandbox that runs": {recorded: &running},
		"removes what a supervisor that died left":          {recorded: &dead, wantRemoved: true},
		"removes this supervisor's own namespace":           {recorded: &self, wantRemoved: true},
		"removes a namespace nobody recorded":               {wantRemoved: true},
	} {
		t.Run(name, func(t *testing.T) {
			useOwnerFile(t, tc.recorded)
			removed := false
			owner, err := releaseNamespace(func() error { removed = true; return nil })
			if err != nil {
				t.Fatal(err)
			}
			if removed != tc.wantRemoved {
				t.Errorf("removed the namespace: %v, want %v", removed, tc.wantRemoved)
			}
			wantOwner := tc.recorded
			if tc.wantRemoved {
				wantOwner = nil
			}
			if !equalOwners(owner, wantOwner) {
				t.Errorf("returned the owner %+v, want %+v", owner, wantOwner)
			}
			if got := recordedOwner(t); !equalOwners(got, wantOwner) {
				t.Errorf("recorded owner %+v afterwards, want %+v", got, wantOwner)
			}
		})
	}
}

func equalOwners(a, b *netnsOwner) bool {
	return a == nil && b == nil || a != nil && b != nil && *a == *b
}
