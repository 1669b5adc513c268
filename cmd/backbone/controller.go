package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/backbone-mesh/backbone/internal/controller"
	"github.com/backbone-mesh/backbone/internal/install"
	"github.com/backbone-mesh/backbone/internal/mirror"
	"github.com/backbone-mesh/backbone/internal/probe"
	"github.com/backbone-mesh/backbone/internal/targets"
)

func init() { subcommands = append(subcommands, newControllerCmd) }

// defaultGCPercent is the controller's GOGC unless the environment sets one.
const defaultGCPercent = 50

func newControllerCmd(root *rootOptions) *cobra.Command {
	opts := controller.Options{}
	var portRange, egressPortRange, logLevel, trustDomain, ingressMode, gatewayRef string
	var resolve []string
	cmd := &cobra.Command{
		Use:   "controller",
		Short: "Run a cluster's control plane: mirrors, link probes, egress and ingress targets",
		Long: `The controller mirrors the exported services of every linked cluster (a Link
in backbone-system), allocates a gateway port to every mirrored service port,
probes the linked gateways, and writes status, events and metrics. The
status of the egress targets it serves comes from the local gateways, which
probe them (their connections are the ones the cluster lets out).`,
		Example: `  backbone controller --cluster-name west --leader-elect \
    --identity-dir /var/run/backbone/identity`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			opts.Log = newLogger(logLevel)
			r, err := mirror.ParsePortRange(portRange)
			if err != nil {
				return fmt.Errorf("--gateway-port-range: %w", err)
			}
			opts.Ports = r
			if opts.EgressPorts, err = mirror.ParsePortRange(egressPortRange); err != nil {
				return fmt.Errorf("--egress-port-range: %w", err)
			}
			// Both ranges are ports on the same gateway addresses: a port
			// in both would be handed to a mirror and an egress target,
			// and only one of them could listen on it.
			if r.Low <= opts.EgressPorts.High && opts.EgressPorts.Low <= r.High {
				return fmt.Errorf("--gateway-port-range %s and --egress-port-range %s overlap: the gateway listens on both", portRange, egressPortRange)
			}
			if len(resolve) > 0 {
				opts.Log.Warn("--egress-resolve is ignored by the controller: the gateway probes egress targets; give the pins to the gateway")
			}
			opts.TrustDomain = trustDomain
			if opts.Ingress.Mode, err = targets.ParseIngressMode(ingressMode); err != nil {
				return fmt.Errorf("--ingress-mode: %w", err)
			}
			switch {
			case gatewayRef != "":
				if opts.Ingress.Gateway, err = targets.ParseGatewayRef(gatewayRef); err != nil {
					return fmt.Errorf("--gateway-ref: %w", err)
				}
			case opts.Ingress.Mode == targets.IngressModeHTTPRoute:
				return fmt.Errorf("--ingress-mode httproute needs --gateway-ref namespace/name[/sectionName]: the Gateway the HTTPRoutes attach to")
			}
			cfg, err := root.kube.RESTConfig()
			if err != nil {
				return err
			}
			// Mirroring 10,000 services is 20,000 writes: the API server's priority
			// and fairness, not a client-side 100/s, should pace them.
			cfg.QPS, cfg.Burst = 1000, 2000
			// The controller's heap is mostly its caches, long-lived: letting
			// the heap grow to twice them before collecting (Go's default,
			// GOGC=100) costs memory for little CPU saved. GOGC in the
			// environment overrides this.
			if os.Getenv("GOGC") == "" {
				debug.SetGCPercent(defaultGCPercent)
			}
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return controller.Run(ctx, cfg, opts)
		},
	}
	f := cmd.Flags()
	f.StringVar(&opts.ClusterName, "cluster-name", "", "this cluster's name")
	f.StringVar(&portRange, "gateway-port-range", "20000-29999", "gateway ports allocated to mirrored service ports")
	f.BoolVar(&opts.LeaderElection, "leader-elect", false, "elect a leader among replicas (a Lease in backbone-system)")
	f.StringVar(&opts.AdminAddress, "admin-address", ":9090", "address of /metrics, /healthz and /readyz")
	f.StringVar(&opts.PprofAddress, "pprof-address", "", "address of net/http/pprof's /debug/pprof/ (empty: off; it exposes the process's memory, keep it on loopback)")
	f.StringVar(&opts.IdentityDir, "identity-dir", "", "gateway identity (tls.crt, tls.key, ca.crt) the link probe dials peers with; empty disables probing")
	f.DurationVar(&opts.CertificateExpiryWarning, "certificate-expiry-warning", probe.DefaultExpiryWarning, "report a Link's certificates (ours or the peer gateway's) as Expiring this long before they expire")
	f.DurationVar(&opts.CertificateInspectPeriod, "certificate-inspect-period", 5*time.Minute, "how often the link probe makes a handshake of its own to read the certificates on both ends of each link")
	f.StringVar(&trustDomain, "trust-domain", "", "expected trust domain of the identity in --identity-dir (checked at start)")
	f.DurationVar(&opts.Resync, "resync", 30*time.Second, "how often every Link is re-checked without events")
	f.StringVar(&egressPortRange, "egress-port-range", "30000-30999", "gateway ports allocated to the egress targets this cluster serves")
	f.StringVar(&opts.Ingress.Domain, "ingress-domain", "", "domain of the default ingress host <service>.<cluster>.<domain>")
	f.StringVar(&ingressMode, "ingress-mode", string(targets.IngressModeIngress), "what an IngressTarget becomes: ingress (an Ingress) or httproute (a Gateway API HTTPRoute on --gateway-ref); switching removes the objects of the other kind")
	f.StringVar(&gatewayRef, "gateway-ref", "", "namespace/name[/sectionName] of the Gateway (and listener) HTTPRoutes attach to, with --ingress-mode httproute")
	f.StringVar(&opts.Ingress.ClassName, "ingress-class", "nginx", "ingressClassName of the Ingresses made for IngressTargets")
	f.StringVar(&opts.Ingress.ClusterIssuer, "cluster-issuer", "letsencrypt", "cert-manager ClusterIssuer annotated on those Ingresses (empty: none); unused with httproute, where the Gateway holds TLS")
	f.Int32Var(&opts.GatewayAdminPort, "gateway-admin-port", install.AdminPort, "admin port of the local gateways, where each reports its egress probes (the controller writes EgressTarget status from them)")
	f.StringArrayVar(&resolve, "egress-resolve", nil, "ignored: the gateway probes egress targets and takes the pins")
	_ = f.MarkDeprecated("egress-resolve", "the gateway probes egress targets; give --egress-resolve to the gateway")
	f.StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	_ = cmd.MarkFlagRequired("cluster-name")
	return cmd
}
