package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/backbone-mesh/backbone/internal/gateway"
	"github.com/backbone-mesh/backbone/internal/install"
	"github.com/backbone-mesh/backbone/internal/origin"
)

func init() { subcommands = append(subcommands, newGatewayCmd) }

func newGatewayCmd(root *rootOptions) *cobra.Command {
	opts := gateway.Options{}
	var logLevel string
	var resolve []string
	cmd := &cobra.Command{
		Use:   "gateway",
		Short: "Run a cluster's gateway: the mTLS tunnel endpoint and the mirrors' listeners",
		Long: `The gateway is the data plane of one cluster. Peer gateways tunnel into its
inbound port (TLS 1.3, client certificates, HTTP/2 CONNECT) to reach the
services this cluster exports; it listens on the port allocated to every
mirrored service and tunnels each connection to the remote cluster's
gateway over a pooled connection. It originates TLS to the egress targets
this cluster serves, probes them, and reports the probes on its admin port
(metrics, and /egress/probes for the controller). SIGTERM drains it
gracefully.`,
		Example: `  backbone gateway --cluster-name west --identity-dir /var/run/backbone/identity \
    --outbound-bind-ip "$POD_IP"`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log := newLogger(logLevel)
			pins, err := origin.ParseResolve(resolve)
			if err != nil {
				return fmt.Errorf("--egress-resolve: %w", err)
			}
			opts.Resolve = pins
			for _, d := range []struct {
				flag string
				v    time.Duration
			}{
				{"--egress-probe-period", opts.EgressProbePeriod}, {"--egress-probe-timeout", opts.EgressProbeTimeout},
				{"--drain-timeout", opts.DrainTimeout}, {"--dial-timeout", opts.DialTimeout}, {"--header-timeout", opts.HeaderTimeout},
			} {
				if d.v <= 0 {
					return fmt.Errorf("%s must be positive, not %s", d.flag, d.v)
				}
			}
			if opts.EgressProbeFailureThreshold < 1 {
				return fmt.Errorf("--egress-probe-failure-threshold must be at least 1, not %d", opts.EgressProbeFailureThreshold)
			}
			if opts.ShutdownDelay < 0 {
				return fmt.Errorf("--shutdown-delay must not be negative, not %s", opts.ShutdownDelay)
			}
			cfg, err := root.kube.RESTConfig()
			if err != nil {
				return err
			}
			cfg.QPS, cfg.Burst = 50, 100
			g, err := gateway.New(cfg, opts, log)
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return g.Run(ctx)
		},
	}
	f := cmd.Flags()
	f.StringVar(&opts.ClusterName, "cluster-name", "", "this cluster's name (must match the identity)")
	f.StringVar(&opts.TrustDomain, "trust-domain", "", "expected trust domain of the identity (checked at start; empty: any)")
	f.StringVar(&opts.IdentityDir, "identity-dir", "/var/run/backbone/identity", "directory with tls.crt, tls.key and ca.crt; reloaded when they change")
	f.StringVar(&opts.InboundAddress, "inbound-address", ":4143", "address of the mTLS tunnel endpoint")
	f.StringVar(&opts.OutboundBindIP, "outbound-bind-ip", "", "IP the mirrors' listeners bind to (the pod IP; empty: all)")
	// The installed admin port, where the controller's --gateway-admin-port
	// looks for the egress probes by default.
	f.StringVar(&opts.AdminAddress, "admin-address", fmt.Sprintf(":%d", install.AdminPort), "address of /healthz, /readyz, /metrics and /egress/probes")
	f.StringVar(&opts.PprofAddress, "pprof-address", "", "address of net/http/pprof's /debug/pprof/ (empty: off; it exposes the process's memory, keep it on loopback)")
	f.DurationVar(&opts.DrainTimeout, "drain-timeout", 30*time.Second, "how long streams in flight may take to finish once the listeners closed")
	f.DurationVar(&opts.ShutdownDelay, "shutdown-delay", 5*time.Second, "how long new connections are still served after SIGTERM, with readiness already false, before the listeners close: the time kube-proxy and load balancers take to drop the endpoint (0: none); the pod's terminationGracePeriodSeconds must exceed it plus --drain-timeout")
	f.DurationVar(&opts.DialTimeout, "dial-timeout", 5*time.Second, "timeout of dials to peer gateways and backends")
	f.DurationVar(&opts.HeaderTimeout, "header-timeout", 10*time.Second, "time a peer has to complete its handshake and request headers")
	f.DurationVar(&opts.EgressProbePeriod, "egress-probe-period", 10*time.Second, "how often each egress target this gateway serves is probed (±10% jitter); the controller writes status from the results")
	f.DurationVar(&opts.EgressProbeTimeout, "egress-probe-timeout", 5*time.Second, "how long one egress probe (connect, TLS handshake, request) may take")
	f.IntVar(&opts.EgressProbeFailureThreshold, "egress-probe-failure-threshold", 3, "how many egress probes of a target in a row must fail before this gateway reports it unreachable; one success brings it back")
	f.StringVar(&opts.InboundServer, "inbound-server", gateway.InboundServerBackbone, "HTTP/2 server of the inbound port: backbone (streams write their answers straight to the connection) or net/http (Go's, kept for comparison)")
	f.StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	f.StringArrayVar(&resolve, "egress-resolve", nil, "NAME=ADDRESS[,ADDRESS...]: pin an egress target's name to addresses instead of DNS (repeatable; dial-time checks still apply)")
	_ = cmd.MarkFlagRequired("cluster-name")
	return cmd
}

// newLogger returns a JSON slog logger on stderr, made the default.
func newLogger(level string) *slog.Logger {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		l = slog.LevelInfo
	}
	log := slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: l}))
	slog.SetDefault(log)
	return log
}
