package sandbox

import (
	"bytes"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
)

// diesWithSupervisor makes the kernel kill a child when the supervisor
// dies, however it dies (SIGKILL included), so a crash leaves no process
// behind. SIGKILL, not SIGTERM: a gateway would drain for half a minute.
func diesWithSupervisor() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}

// execTiedToParent replaces this process with argv, to be killed when
// the parent (pid parent) dies. The parent-death signal belongs to the
// thread that sets it and survives execve, so both happen on one thread.
func execTiedToParent(parent int, path string, argv []string) error {
	runtime.LockOSThread()
	if _, _, errno := syscall.RawSyscall(syscall.SYS_PRCTL, syscall.PR_SET_PDEATHSIG, uintptr(syscall.SIGKILL), 0); errno != 0 {
		return errno
	}
	// The parent may have died before the signal was armed.
	if os.Getppid() != parent {
		return errSupervisorGone
	}
	return syscall.Exec(path, argv, os.Environ())
}

// processStart returns when a process started (clock ticks after boot)
// and whether it is a zombie; ok is false when it does not exist.
func processStart(pid int) (start uint64, zombie, ok bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, false, false
	}
	// pid (comm) state ppid ... starttime is the 22nd field; comm may hold
	// spaces and parentheses, so count after its last ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, false, false
	}
	fields := strings.Fields(string(b[i+1:]))
	if len(fields) < 20 {
		return 0, false, false
	}
	start, err = strconv.ParseUint(fields[19], 10, 64)
	if err != nil {
		return 0, false, false
	}
	return start, fields[0] == "Z" || fields[0] == "X", true
}

// leftovers lists the live processes, other than this one, whose
// environment marks them as started by the sandbox in dir. Processes whose
// environment this user may not read are not the sandbox's.
func leftovers(dir string) ([]int, error) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	mark := []byte(dirEnv + "=" + dir)
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		env, err := os.ReadFile(filepath.Join("/proc", e.Name(), "environ"))
		if err != nil {
			continue
		}
		for _, kv := range bytes.Split(env, []byte{0}) {
			if bytes.Equal(kv, mark) {
				if _, zombie, ok := processStart(pid); ok && !zombie {
					pids = append(pids, pid)
				}
				break
			}
		}
	}
	return pids, nil
}
