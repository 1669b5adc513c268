package main

import (
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/backbone-mesh/backbone/internal/check"
)

func init() { subcommands = append(subcommands, newCheckCmd) }

func newCheckCmd(root *rootOptions) *cobra.Command {
	var (
		output string
		o      check.Options
	)
	cmd := &cobra.Command{
		Use:   "check",
		Short: "Diagnose backbone in a cluster; every failure says what to run",
		Long: `Checks, in the selected cluster: backbone's CRDs are present and the ones
this binary carries; the controller and gateway Deployments are ready; the
gateway Service has an address and an identity; each Link's credentials are
present, safe (no exec plugins or file paths), not expiring within 30 days,
and accepted by the linked API server; every mirror has ready endpoints; no
mirror comes from a cluster without a Link. Exits non-zero when any check
fails. Not yet checked: a shared trust anchor, gateway probes, certificate
expiry.`,
		Example: `  backbone --context west check
  backbone --context west check -o json | jq '.results[] | select(.ok | not)'`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := root.kube.Client()
			if err != nil {
				return err
			}
			o.Now = time.Now()
			report := check.Run(cmd.Context(), c, o)
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
	cmd.Flags().DurationVar(&o.ExpiryWarning, "expiry-warning", 30*24*time.Hour, "fail on credentials expiring sooner than this")
	return cmd
}
