package sandbox

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

var errSupervisorGone = errors.New("the sandbox supervisor is gone")

// ExecChild replaces this process with argv, tied to its parent, the
// supervisor (pid parent): when the supervisor dies, the kernel kills it.
// It is `backbone sandbox child`, which the control planes are started
// through, since envtest starts them without a parent-death signal. It
// returns only on error.
func ExecChild(parent int, argv []string) error {
	if len(argv) == 0 {
		return errors.New("no program to run")
	}
	path, err := exec.LookPath(argv[0])
	if err != nil {
		return err
	}
	if err := execTiedToParent(parent, path, argv); err != nil {
		return fmt.Errorf("running %s: %w", argv[0], err)
	}
	return nil
}

// tieToSupervisor writes, in dir, a script per binary of binDir (etcd,
// kube-apiserver) that runs it through `backbone sandbox child`, so that
// the control planes envtest starts die with the supervisor too. It
// returns the scripts' paths by binary name.
func tieToSupervisor(dir, binDir, self string) (map[string]string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	paths := map[string]string{}
	for _, name := range []string{"etcd", "kube-apiserver"} {
		real := filepath.Join(binDir, name)
		if _, err := os.Stat(real); err != nil {
			return nil, err
		}
		script := fmt.Sprintf("#!/bin/sh\nexec %s sandbox child --parent %d -- %s \"$@\"\n", shellQuote(self), os.Getpid(), shellQuote(real))
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(script), 0o755); err != nil {
			return nil, err
		}
		paths[name] = path
	}
	return paths, nil
}

func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
