package sandbox

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"syscall"
)

// The network namespace and its veth pair have fixed names, so a machine
// holds one sandbox's at a time. The supervisor that made them records
// itself in ownerFile, as it does in its state.json (pid and start time),
// so that another sandbox refuses to start instead of tearing down a live
// one's network, and only what nobody running owns is removed. The record
// is read and written under an flock, so two sandboxes starting at once
// do not both take the namespace.

// ownerFile lives in /run, beside the namespace (/run/netns), and like it
// does not outlive a reboot. A variable for the tests.
var ownerFile = "/run/backbone-sandbox.owner"

// netnsOwner is the supervisor that holds the namespace.
type netnsOwner struct {
	Dir       string `json:"dir"`
	PID       int    `json:"pid"`
	StartTime uint64 `json:"startTime,omitempty"`
}

func (o *netnsOwner) running() bool {
	return (&State{PID: o.PID, StartTime: o.StartTime}).Running()
}

// claimNamespace makes this process, the supervisor of dir, the owner of
// the namespace and runs create to make it, unless another supervisor
// that still runs owns it.
func claimNamespace(dir string, create func() error) error {
	rec, err := lockOwnerRecord()
	if err != nil {
		return err
	}
	if o := rec.otherLiveOwner(); o != nil {
		rec.unlock(false)
		return fmt.Errorf("the network namespace %s belongs to the sandbox running from %s (pid %d): one sandbox at a time can have it; stop that one first (backbone sandbox down --dir %s)", netnsName, o.Dir, o.PID, o.Dir)
	}
	self := netnsOwner{Dir: dir, PID: os.Getpid()}
	self.StartTime, _, _ = processStart(self.PID)
	if err := rec.write(self); err != nil {
		rec.unlock(true)
		return err
	}
	err = create()
	rec.unlock(err != nil)
	return err
}

// releaseNamespace runs remove and forgets the owner, unless a supervisor
// other than this process, that still runs, owns the namespace: then it
// leaves both and returns that owner.
func releaseNamespace(remove func() error) (*netnsOwner, error) {
	rec, err := lockOwnerRecord()
	if err != nil {
		return nil, err
	}
	if o := rec.otherLiveOwner(); o != nil {
		rec.unlock(false)
		return o, nil
	}
	err = remove()
	rec.unlock(true)
	return nil, err
}

// ownerRecord is ownerFile, open and locked.
type ownerRecord struct{ f *os.File }

func lockOwnerRecord() (*ownerRecord, error) {
	for {
		f, err := os.OpenFile(ownerFile, os.O_RDWR|os.O_CREATE, 0o644)
		if err != nil {
			return nil, fmt.Errorf("the record of the sandbox network's owner: %w", err)
		}
		if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
			_ = f.Close()
			return nil, fmt.Errorf("locking %s: %w", ownerFile, err)
		}
		// The last holder may have removed the file while this process
		// waited for its lock: then lock the one there now.
		var held, now syscall.Stat_t
		if syscall.Fstat(int(f.Fd()), &held) == nil && syscall.Stat(ownerFile, &now) == nil &&
			held.Dev == now.Dev && held.Ino == now.Ino {
			return &ownerRecord{f: f}, nil
		}
		_ = f.Close()
	}
}

// otherLiveOwner returns the recorded owner if it is another process
// that still runs.
func (r *ownerRecord) otherLiveOwner() *netnsOwner {
	b, err := io.ReadAll(io.NewSectionReader(r.f, 0, 1<<16))
	if err != nil || len(b) == 0 {
		return nil
	}
	o := &netnsOwner{}
	if json.Unmarshal(b, o) != nil || o.PID == os.Getpid() || !o.running() {
		return nil
	}
	return o
}

func (r *ownerRecord) write(o netnsOwner) error {
	b, err := json.Marshal(o)
	if err != nil {
		return err
	}
	if err := r.f.Truncate(0); err != nil {
		return err
	}
	_, err = r.f.WriteAt(b, 0)
	return err
}

// unlock releases the record, removing it first when forget is set.
func (r *ownerRecord) unlock(forget bool) {
	if forget {
		_ = os.Remove(ownerFile)
	}
	_ = r.f.Close()
}
