package main

import (
	"github.com/spf13/cobra"

	"github.com/backbone-mesh/backbone/internal/install"
)

func init() { subcommands = append(subcommands, newInstallCmd) }

func newInstallCmd(*rootOptions) *cobra.Command {
	v := install.DefaultValues()
	var sets []string
	cmd := &cobra.Command{
		Use:   "install --cluster-name NAME",
		Short: "Print the manifests that run backbone in a cluster",
		Long: `Prints, in apply order, everything a cluster needs: backbone's CRDs, the
backbone-system namespace, ServiceAccounts and least-privilege RBAC, the
controller (2 replicas, leader election) and gateway (2 replicas,
PodDisruptionBudget, anti-affinity) Deployments, the gateway's LoadBalancer
Service and a metrics Service. The output is deterministic: commit it to git,
or apply it. The Helm chart in charts/backbone renders the same objects from
the same values (--set takes the chart's keys).

The gateway reads its identity from the Secret gateway.identitySecret
(tls.crt, tls.key, ca.crt): create it with backbone certs or cert-manager.`,
		Example: `  backbone install --cluster-name east --trust-domain bank.example --cloud aws | kubectl --context east apply --server-side --field-manager=backbone-install -f -

  # For git, pinned image, ServiceMonitor on:
  backbone install --cluster-name west --cloud azure --image ghcr.io/backbone-mesh/backbone:v0.1.0 \
    --set metrics.serviceMonitor=true > clusters/west/backbone.yaml`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			// --set goes last, so it wins over the named flags.
			if err := v.Set(sets); err != nil {
				return err
			}
			out, err := install.Render(v)
			if err != nil {
				return err
			}
			_, err = cmd.OutOrStdout().Write(out)
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&v.ClusterName, "cluster-name", "", "this cluster's name (mirrors elsewhere are <service>-<name>)")
	f.StringVar(&v.TrustDomain, "trust-domain", v.TrustDomain, "trust domain of the gateway identities")
	f.Var(imageFlag{&v.Image}, "image", "backbone image, repository:tag")
	f.StringVar(&v.Cloud, "cloud", "", "gateway load balancer annotations for aws (NLB), azure or gcp")
	f.StringArrayVar(&sets, "set", nil, "set a chart value, key=value (repeatable), e.g. gateway.replicas=3")
	return cmd
}

// imageFlag splits "repository:tag" into the chart's two values.
type imageFlag struct{ image *install.ImageValues }

func (f imageFlag) String() string {
	if f.image == nil {
		return ""
	}
	return f.image.Repository + ":" + f.image.Tag
}

func (f imageFlag) Set(s string) error {
	repo, tag := s, "latest"
	// A colon after the last slash separates the tag; one before it is a
	// registry port.
	if i := lastIndex(s, ':'); i > lastIndex(s, '/') {
		repo, tag = s[:i], s[i+1:]
	}
	f.image.Repository, f.image.Tag = repo, tag
	return nil
}

func (imageFlag) Type() string { return "image" }

func lastIndex(s string, c byte) int {
	for i := len(s) - 1; i >= 0; i-- {
		if s[i] == c {
			return i
		}
	}
	return -1
}
