package main

import (
	"fmt"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/client-go/kubernetes"

	"github.com/backbone-mesh/backbone/internal/link"
)

func init() { subcommands = append(subcommands, newLinkCmd) }

func newLinkCmd(root *rootOptions) *cobra.Command {
	var (
		o            link.Options
		output       string
		secretOutput string
		tokenFile    string
	)
	cmd := &cobra.Command{
		Use:   "link --cluster-name NAME",
		Short: "Print the Secret and Link that let another cluster mirror this one",
		Long: `Run against the exporting cluster. Prints a Secret (type
backbone.dev/remote-kubeconfig) holding a kubeconfig for this cluster's
backbone-link-reader ServiceAccount — which may only get/list/watch Services,
EndpointSlices and ServiceExports — and a Link naming this cluster's gateway.
Apply both to the cluster that should mirror this one.

Gateway addresses and identity default to the backbone-gateway Service's load
balancer address, "inbound" port and identity annotation. The API server URL
comes from the current context (--api-server overrides it when the other
cluster reaches it by another address).

Nothing in either cluster changes, except that --create-token creates a token
through the TokenRequest API. The output is deterministic apart from that token.`,
		Example: `  # Let west mirror east:
  backbone --context east link --cluster-name east --create-token | kubectl --context west apply -f -

  # For git: the Secret to its own file, to encrypt with SOPS; the Link to stdout.
  backbone --context east link --cluster-name east --create-token --secret-output east-secret.yaml > clusters/west/link-east.yaml
  sops --encrypt --in-place east-secret.yaml`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if tokenFile != "" {
				raw, err := readFileOrStdin(cmd, tokenFile)
				if err != nil {
					return fmt.Errorf("--token-file: %w", err)
				}
				o.Token = string(raw)
			}
			cfg, err := root.kube.RESTConfig()
			if err != nil {
				return err
			}
			cs, err := kubernetes.NewForConfig(cfg)
			if err != nil {
				return err
			}
			res, err := link.Generate(cmd.Context(), cfg, cs, o)
			if err != nil {
				return err
			}
			if !res.TokenExpiry.IsZero() {
				fmt.Fprintf(cmd.ErrOrStderr(), "created a token for backbone-system/backbone-link-reader, expiring %s: rerun before then\n", res.TokenExpiry.UTC().Format(time.RFC3339))
			}
			if secretOutput != "" {
				secret, err := link.Print("yaml", res.Secret)
				if err != nil {
					return err
				}
				if err := link.WriteSecretFile(secretOutput, secret); err != nil {
					return fmt.Errorf("--secret-output: %w", err)
				}
				out, err := link.Print(output, res.Link)
				if err != nil {
					return err
				}
				_, err = cmd.OutOrStdout().Write(out)
				return err
			}
			out, err := link.Print(output, res.Secret, res.Link)
			if err != nil {
				return err
			}
			_, err = cmd.OutOrStdout().Write(out)
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.ClusterName, "cluster-name", "", "name of this (the exporting) cluster; mirrors elsewhere are <service>-<name>")
	f.StringSliceVar(&o.GatewayAddresses, "gateway-address", nil, "host:port of this cluster's gateway, repeatable (default: the backbone-gateway Service's address)")
	f.StringVar(&o.GatewayIdentity, "gateway-identity", "", "SPIFFE ID of this cluster's gateway (default: the backbone-gateway Service's annotation)")
	f.StringVar(&o.APIServer, "api-server", "", "API server URL the other cluster uses (default: the current context's)")
	f.BoolVar(&o.CreateToken, "create-token", false, "create a token for the backbone-link-reader ServiceAccount (TokenRequest API)")
	f.DurationVar(&o.TokenDuration, "token-duration", 365*24*time.Hour, "lifetime of the token --create-token requests")
	f.StringVar(&tokenFile, "token-file", "", "read the link reader's token from this file (- for stdin) instead of creating one")
	f.StringVarP(&output, "output", "o", "yaml", "output format: yaml or json")
	f.StringVar(&secretOutput, "secret-output", "", "write the Secret alone to this file (mode 0600), e.g. for SOPS")
	_ = cmd.MarkFlagRequired("cluster-name")
	return cmd
}
