package main

import (
	"github.com/spf13/cobra"

	"github.com/backbone-mesh/backbone/internal/kube"
)

// rootOptions holds the flags every command shares.
type rootOptions struct {
	kube kube.Flags
}

// subcommands is filled by each command's file, so commands stay
// independent of one another.
var subcommands []func(*rootOptions) *cobra.Command

func newRootCmd() *cobra.Command {
	opts := &rootOptions{}
	cmd := &cobra.Command{
		Use:   "backbone",
		Short: "Connect Kubernetes clusters across clouds over mTLS",
		Long: `backbone connects Kubernetes clusters across cloud providers: services
exported in one cluster appear in the others as <service>-<cluster> and are
reached through pooled mTLS tunnels between cluster gateways; external
resources and ingress are declared in git; the links are measured.`,
		SilenceUsage: true,
	}
	cmd.PersistentFlags().StringVar(&opts.kube.Kubeconfig, "kubeconfig", "", "path to the kubeconfig file (default: $KUBECONFIG, then ~/.kube/config)")
	cmd.PersistentFlags().StringVar(&opts.kube.Context, "context", "", "name of the kubeconfig context to use")
	for _, sub := range subcommands {
		cmd.AddCommand(sub(opts))
	}
	return cmd
}
