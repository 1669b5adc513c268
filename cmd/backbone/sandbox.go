package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/backbone-mesh/backbone/internal/sandbox"
)

func init() { subcommands = append(subcommands, newSandboxCmd) }

type sandboxOptions struct {
	dir         string
	clusters    []string
	trustDomain string
}

func newSandboxCmd(*rootOptions) *cobra.Command {
	opts := &sandboxOptions{}
	cmd := &cobra.Command{
		Use:   "sandbox",
		Short: "Run a whole multi-cluster backbone on this machine",
		Long: `The sandbox starts one real control plane (etcd + kube-apiserver) per
cluster, a controller and a gateway per cluster, links every cluster to every
other through proxies that add inter-cloud latencies, and deploys demo
workloads. Everything runs as local processes; nothing leaves the machine.`,
	}
	cmd.PersistentFlags().StringVar(&opts.dir, "dir", ".sandbox", "directory for the sandbox's kubeconfigs, certificates, logs and state")
	cmd.AddCommand(newSandboxUpCmd(opts), newSandboxDownCmd(opts), newSandboxStatusCmd(opts),
		newSandboxServeCmd(opts), newSandboxCurlCmd(opts), newDemoServerCmd(), newSandboxChildCmd())
	return cmd
}

func addClusterFlags(cmd *cobra.Command, opts *sandboxOptions) {
	cmd.Flags().StringSliceVar(&opts.clusters, "clusters", []string{"east", "west", "platform"}, "cluster names; the first three play AWS eu-west-1, Azure westeurope and GCP europe-west1")
	cmd.Flags().StringVar(&opts.trustDomain, "trust-domain", "sandbox.backbone.dev", "SPIFFE trust domain of the sandbox's identities")
}

func (o *sandboxOptions) runOptions(progress io.Writer) (sandbox.Options, error) {
	self, err := os.Executable()
	if err != nil {
		return sandbox.Options{}, err
	}
	dir, err := filepath.Abs(o.dir)
	if err != nil {
		return sandbox.Options{}, err
	}
	if len(o.clusters) < 2 {
		return sandbox.Options{}, fmt.Errorf("--clusters: need at least two clusters, got %v", o.clusters)
	}
	return sandbox.Options{
		Clusters: o.clusters, Dir: dir, TrustDomain: o.trustDomain,
		Self: self, RepoRoot: findRepoRoot(), Progress: progress,
	}, nil
}

// findRepoRoot finds the backbone checkout the command runs in, whose
// hack/cluster-binaries.sh can build the cluster binaries.
func findRepoRoot() string {
	dir, err := os.Getwd()
	if err != nil {
		return ""
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "hack", "cluster-binaries.sh")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return ""
		}
		dir = parent
	}
}

func newSandboxUpCmd(opts *sandboxOptions) *cobra.Command {
	var foreground bool
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "up",
		Short: "Start the sandbox in the background and print what runs where",
		Example: `  backbone sandbox up
  backbone sandbox up --clusters east,west,platform --dir .sandbox
  export KUBECONFIG=$PWD/.sandbox/kubeconfig; kubectl --context west get svc -A`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ro, err := opts.runOptions(cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			if st, err := sandbox.ReadState(ro.Dir); err == nil && st.Running() {
				if !st.Ready {
					return fmt.Errorf("a sandbox is starting from %s (pid %d): wait for it, or backbone sandbox down --dir %s", ro.Dir, st.PID, opts.dir)
				}
				// Idempotent: the sandbox is up; say so and show it.
				fmt.Fprintf(cmd.ErrOrStderr(), "==> a sandbox already runs from %s (pid %d); backbone sandbox down --dir %s stops it\n", ro.Dir, st.PID, opts.dir)
				return sandbox.WriteSummary(cmd.Context(), cmd.OutOrStdout(), ro.Dir, st)
			}
			// A sandbox whose supervisor was killed leaves its network, its
			// clusters' data and its state behind.
			if err := sandbox.Recover(ro.Dir, cmd.ErrOrStderr()); err != nil {
				return fmt.Errorf("cleaning up after the last sandbox in %s: %w", ro.Dir, err)
			}
			if foreground {
				ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
				defer stop()
				return sandbox.Run(ctx, ro)
			}
			if err := os.MkdirAll(ro.Dir, 0o755); err != nil {
				return err
			}
			logPath := filepath.Join(ro.Dir, "sandbox.log")
			logFile, err := os.Create(logPath)
			if err != nil {
				return err
			}
			defer func() { _ = logFile.Close() }()
			args := []string{"sandbox", "serve", "--dir", ro.Dir, "--clusters", strings.Join(ro.Clusters, ","), "--trust-domain", ro.TrustDomain}
			serve := exec.Command(ro.Self, args...)
			serve.Stdout, serve.Stderr = logFile, logFile
			serve.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
			if err := serve.Start(); err != nil {
				return err
			}
			exited := make(chan error, 1)
			go func() { exited <- serve.Wait() }()
			st, err := followUntilReady(cmd.Context(), cmd.ErrOrStderr(), logPath, ro.Dir, exited, timeout)
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.ErrOrStderr(), "==> waiting for the first mirrors and link probes")
			if _, err := sandbox.WaitForMirror(cmd.Context(), st, st.Clusters[1].Name, "demo", "hello-"+st.Clusters[0].Name, 60*time.Second); err != nil {
				fmt.Fprintf(cmd.ErrOrStderr(), "warning: %v (see %s/logs)\n", err, opts.dir)
			}
			time.Sleep(4 * time.Second) // one probe period, so the matrix has numbers
			return sandbox.WriteSummary(cmd.Context(), cmd.OutOrStdout(), ro.Dir, st)
		},
	}
	addClusterFlags(cmd, opts)
	cmd.Flags().BoolVar(&foreground, "foreground", false, "run in the foreground until interrupted, logging to the terminal")
	cmd.Flags().DurationVar(&timeout, "timeout", 30*time.Minute, "how long to wait for the sandbox (the first build of the cluster binaries takes minutes)")
	return cmd
}

// followUntilReady prints the supervisor's log as it grows until it
// reports ready or fails.
func followUntilReady(ctx context.Context, w io.Writer, logPath, dir string, exited <-chan error, timeout time.Duration) (*sandbox.State, error) {
	f, err := os.Open(logPath)
	if err != nil {
		return nil, err
	}
	defer func() { _ = f.Close() }()
	deadline := time.Now().Add(timeout)
	for {
		_, _ = io.Copy(w, f)
		if st, err := sandbox.ReadState(dir); err == nil {
			if st.Error != "" {
				select { // let the supervisor finish tearing down
				case <-exited:
				case <-time.After(60 * time.Second):
				}
				_, _ = io.Copy(w, f)
				return nil, fmt.Errorf("the sandbox failed: %s (logs in %s)", st.Error, dir)
			}
			if st.Ready {
				return st, nil
			}
		}
		select {
		case err := <-exited:
			_, _ = io.Copy(w, f)
			return nil, fmt.Errorf("the sandbox supervisor exited: %v (log: %s)", err, logPath)
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("the sandbox was not ready after %s (log: %s)", timeout, logPath)
		}
	}
}

func newSandboxServeCmd(opts *sandboxOptions) *cobra.Command {
	cmd := &cobra.Command{
		Use:    "serve",
		Short:  "Run the sandbox supervisor in the foreground (what `up` starts in the background)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ro, err := opts.runOptions(cmd.OutOrStdout())
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return sandbox.Run(ctx, ro)
		},
	}
	addClusterFlags(cmd, opts)
	return cmd
}

func newSandboxDownCmd(opts *sandboxOptions) *cobra.Command {
	return &cobra.Command{
		Use:     "down",
		Short:   "Stop the sandbox and everything it started",
		Example: "  backbone sandbox down",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return sandbox.Down(opts.dir, 60*time.Second, cmd.OutOrStdout())
		},
	}
}

// newSandboxChildCmd is how the supervisor starts what it cannot start
// itself with a parent-death signal (envtest's etcd and kube-apiserver).
func newSandboxChildCmd() *cobra.Command {
	var parent int
	cmd := &cobra.Command{
		Use:    "child --parent PID -- PROGRAM [ARG...]",
		Short:  "Run PROGRAM so that it dies with the sandbox supervisor PID",
		Hidden: true,
		Args:   cobra.MinimumNArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			return sandbox.ExecChild(parent, args)
		},
	}
	cmd.Flags().IntVar(&parent, "parent", 0, "pid of the supervisor")
	_ = cmd.MarkFlagRequired("parent")
	return cmd
}

func newSandboxStatusCmd(opts *sandboxOptions) *cobra.Command {
	return &cobra.Command{
		Use:     "status",
		Short:   "Print what the sandbox runs, its mirrors and the latency matrix",
		Example: "  backbone sandbox status",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			st, err := sandbox.ReadState(opts.dir)
			if err != nil {
				return fmt.Errorf("no sandbox state in %s: %w", opts.dir, err)
			}
			if !st.Running() {
				return fmt.Errorf("the sandbox (pid %d) is not running: backbone sandbox up", st.PID)
			}
			var dead []string
			for _, p := range st.Procs {
				if syscall.Kill(p.PID, 0) != nil {
					dead = append(dead, fmt.Sprintf("%s (log: %s)", p.Name, p.Log))
				}
			}
			if err := sandbox.WriteSummary(cmd.Context(), cmd.OutOrStdout(), opts.dir, st); err != nil {
				return err
			}
			if len(dead) > 0 {
				return fmt.Errorf("processes not running: %s", strings.Join(dead, ", "))
			}
			return nil
		},
	}
}

func newSandboxCurlCmd(opts *sandboxOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "curl CLUSTER (NAMESPACE/SERVICE [PATH] | URL)",
		Short: "GET a service as a pod in CLUSTER would: through the endpoint kube-proxy would pick",
		Long: `There is no cluster DNS or kube-proxy on a laptop: curl resolves the
service through CLUSTER's Service and EndpointSlice, as they would, and
sends the request to the endpoint. The service is NAMESPACE/SERVICE, or a
URL whose host is SERVICE.NAMESPACE[.svc[.cluster.local]].`,
		Example: `  backbone sandbox curl west demo/hello-east
  backbone sandbox curl west http://hello-east.demo.svc.cluster.local:8080/
  backbone sandbox curl west backbone-system/credit-score-east /score`,
		Args: cobra.RangeArgs(2, 3),
		RunE: func(cmd *cobra.Command, args []string) error {
			st, err := sandbox.ReadState(opts.dir)
			if err != nil {
				return fmt.Errorf("no sandbox state in %s: %w", opts.dir, err)
			}
			ns, svc, path, err := sandboxTarget(args[1:])
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "GET %s from %s, through the endpoint of %s/%s\n", path, args[0], ns, svc)
			status, body, took, err := sandbox.Call(cmd.Context(), st, args[0], ns, svc, path, 5*time.Second)
			if status != "" {
				_, _ = cmd.OutOrStdout().Write(body)
				fmt.Fprintf(cmd.ErrOrStderr(), "%s in %s\n", status, took.Round(time.Millisecond))
			}
			return err
		},
	}
}

// sandboxTarget reads NAMESPACE/SERVICE [PATH] or a cluster-local URL.
func sandboxTarget(args []string) (ns, svc, path string, err error) {
	path = "/"
	if strings.Contains(args[0], "://") {
		u, err := url.Parse(args[0])
		if err != nil {
			return "", "", "", err
		}
		host := strings.TrimSuffix(strings.TrimSuffix(u.Hostname(), ".cluster.local"), ".svc")
		svc, ns, ok := strings.Cut(host, ".")
		if !ok || strings.Contains(ns, ".") {
			return "", "", "", fmt.Errorf("%q: want http://SERVICE.NAMESPACE[.svc.cluster.local][:PORT]/PATH", args[0])
		}
		if u.RequestURI() != "" {
			path = u.RequestURI()
		}
		return ns, svc, path, nil
	}
	ns, svc, ok := strings.Cut(args[0], "/")
	if !ok {
		return "", "", "", fmt.Errorf("%q: want NAMESPACE/SERVICE or a URL", args[0])
	}
	if len(args) == 2 {
		path = args[1]
	}
	return ns, svc, path, nil
}

func newDemoServerCmd() *cobra.Command {
	var listen, message, certFile, keyFile string
	cmd := &cobra.Command{
		Use:    "demo-server",
		Short:  "A small HTTP(S) server the sandbox runs as a demo workload",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			srv := &http.Server{
				Addr:              listen,
				ReadHeaderTimeout: 10 * time.Second,
				Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					n, _ := io.Copy(io.Discard, io.LimitReader(r.Body, 1<<20))
					fmt.Fprintf(w, "%s (%s %s, host %s, %d bytes received)\n", message, r.Method, r.URL.Path, r.Host, n)
				}),
			}
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			go func() {
				<-ctx.Done()
				sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				_ = srv.Shutdown(sctx)
			}()
			var err error
			if certFile != "" {
				srv.TLSConfig = &tls.Config{MinVersion: tls.VersionTLS12}
				err = srv.ListenAndServeTLS(certFile, keyFile)
			} else {
				err = srv.ListenAndServe()
			}
			if errors.Is(err, http.ErrServerClosed) {
				return nil
			}
			return err
		},
	}
	cmd.Flags().StringVar(&listen, "listen", "", "address to listen on")
	cmd.Flags().StringVar(&message, "message", "hello", "first words of every response")
	cmd.Flags().StringVar(&certFile, "tls-cert", "", "serve HTTPS with this certificate")
	cmd.Flags().StringVar(&keyFile, "tls-key", "", "and this key")
	return cmd
}
