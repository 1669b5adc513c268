//go:build !linux

package sandbox

import "syscall"

// diesWithSupervisor: only Linux can tie a child's life to its parent's;
// elsewhere `sandbox down` stops the children by pid.
func diesWithSupervisor() *syscall.SysProcAttr { return nil }

func execTiedToParent(_ int, path string, argv []string) error {
	return syscall.Exec(path, argv, syscall.Environ())
}

func processStart(int) (start uint64, zombie, ok bool) { return 0, false, false }

func leftovers(string) ([]int, error) { return nil, nil }
