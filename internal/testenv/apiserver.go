package testenv

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// SignalAPIServer sends sig to the cluster's kube-apiserver process: SIGSTOP
// and SIGCONT freeze and resume it, SIGKILL kills it outright (then
// RestartAPIServer). The process is found in /proc by its --cert-dir, which
// is the cluster's own; envtest does not export its PID.
func (c *Cluster) SignalAPIServer(sig syscall.Signal) error {
	pid, err := c.apiServerPID()
	if err != nil {
		return err
	}
	return syscall.Kill(pid, sig)
}

// RestartAPIServer starts the cluster's kube-apiserver again after it was
// killed, on the same address and etcd and with the same certificates and
// keys (kept in the cluster's temporary directory), so kubeconfigs, client
// certificates and ServiceAccount tokens issued before still work. It
// returns once the new process answers /healthz.
func (c *Cluster) RestartAPIServer() error {
	api := c.env.ControlPlane.APIServer
	port := api.SecureServing.Port
	for deadline := time.Now().Add(10 * time.Second); ; {
		if _, err := c.apiServerPID(); err != nil {
			break // gone (a zombie's cmdline is empty, and it holds no sockets)
		}
		if time.Now().After(deadline) {
			return errors.New("kube-apiserver of " + c.Name + " is still running: kill it first")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := api.Start(); err != nil {
		return err
	}
	if api.SecureServing.Port != port {
		return fmt.Errorf("kube-apiserver of %s restarted on port %s, not %s", c.Name, api.SecureServing.Port, port)
	}
	return nil
}

func (c *Cluster) apiServerPID() (int, error) {
	flag := "--cert-dir=" + c.env.ControlPlane.APIServer.CertDir
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return 0, err
	}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cmdline, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		args := strings.Split(string(cmdline), "\x00")
		if filepath.Base(args[0]) == "kube-apiserver" && slices.Contains(args, flag) {
			return pid, nil
		}
	}
	return 0, fmt.Errorf("no kube-apiserver process with %s", flag)
}
