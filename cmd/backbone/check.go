package main

import (
	"fmt"
	"time"

	"github.com/spf13/cobra"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/backbone-mesh/backbone/internal/check"
)

func init() { subcommands = append(subcommands, newCheckCmd) }

func newCheckCmd(root *rootOptions) *cobra.Command {
	var (
		output      string
		o           check.Options
		contexts    []string
		allContexts bool
	)
	cmd := &cobra.Command{
		Use:   "check",
		Short: "Diagnose backbone in a cluster; every failure says what to run",
		Long: `Checks, in the selected cluster: backbone's CRDs are present and the ones
this binary carries; the controller and gateway Deployments have replicas,
all ready and rolled out (as kubectl rollout status judges); the
gateway Service has an address and an identity, whose certificate does not
expire within 30 days; each Link's credentials are present, safe (no exec
plugins or file paths), not expiring within 30 days, and accepted by the
linked API server; the controller's link probe reaches each linked gateway,
and its handshake found both identities valid, not expiring within 30 days,
and each chaining to the other cluster's trust anchor; every mirror has
ready endpoints; no mirror comes from a cluster without a Link.

With --contexts or --all-contexts every cluster is checked, and the trust
anchors of each pair of linked clusters are compared directly: each
cluster's identity (Secret backbone-gateway-identity) must chain to the
other's ca.crt. Exits non-zero when any check fails.`,
		Example: `  backbone --context west check
  backbone --context west check -o json | jq '.results[] | select(.ok | not)'
  backbone check --contexts east,west`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			o.Now = time.Now()
			var report check.Report
			if len(contexts) == 0 && !allContexts {
				c, err := root.kube.Client()
				if err != nil {
					return err
				}
				report = check.Run(cmd.Context(), c, o)
			} else {
				names, err := resolveContexts(root, contexts, allContexts)
				if err != nil {
					return err
				}
				clients := map[string]client.Client{}
				for _, name := range names {
					f := root.kube
					f.Context = name
					c, err := f.Client()
					if err != nil {
						return fmt.Errorf("context %s: %w", name, err)
					}
					clients[name] = c
					report.Add(name, check.Run(cmd.Context(), c, o))
				}
				report.Add("", check.Report{Results: check.Trust(cmd.Context(), clients)})
			}
			if err := report.Print(cmd.OutOrStdout(), output); err != nil {
				return err
			}
			if report.Failed > 0 {
				return fmt.Errorf("%d of %d checks failed", report.Failed, len(report.Results))
			}
			return nil
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "text", "output format: text or json")
	cmd.Flags().StringVar(&o.ClusterName, "cluster-name", "", "this cluster's name, for the commands suggested as fixes")
	cmd.Flags().StringSliceVar(&contexts, "contexts", nil, "kubeconfig contexts of the clusters to check, and whose trust anchors to compare (comma-separated)")
	cmd.Flags().BoolVar(&allContexts, "all-contexts", false, "check every context of the kubeconfig")
	cmd.Flags().DurationVar(&o.ExpiryWarning, "expiry-warning", 30*24*time.Hour, "fail on credentials expiring sooner than this")
	return cmd
}
