package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/backbone-mesh/backbone/internal/certs"
	"github.com/backbone-mesh/backbone/internal/identity"
)

func init() { subcommands = append(subcommands, newCertsCmd) }

func newCertsCmd(*rootOptions) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "certs",
		Short: "Create a trust anchor and gateway identities",
		Long: `Gateways authenticate each other with X.509 certificates whose only URI SAN
is spiffe://<trust-domain>/cluster/<name>, signed by a trust anchor every
cluster trusts. These commands create both. cert-manager can issue the
identities instead, from the anchor or, keeping the anchor's key offline,
from a per-cluster issuing CA (certs issuing-ca; see docs/identities.md,
"With cert-manager").`,
	}
	cmd.AddCommand(newCertsAnchorCmd(), newCertsIssueCmd(), newCertsIssuingCACmd())
	return cmd
}

func newCertsAnchorCmd() *cobra.Command {
	var trustDomain, out string
	var validity time.Duration
	cmd := &cobra.Command{
		Use:   "trust-anchor",
		Short: "Create a trust anchor (an ECDSA P-256 root) for a trust domain",
		Example: `  backbone certs trust-anchor --trust-domain bank.example --out anchor/
  # keep anchor/ca.key offline; distribute anchor/ca.crt as every gateway's ca.crt`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if validity <= 0 {
				return fmt.Errorf("--validity must be positive, not %s", validity)
			}
			if _, err := os.Stat(filepath.Join(out, certs.AnchorKeyFile)); err == nil {
				return fmt.Errorf("%s already holds a trust anchor; refusing to overwrite it", out)
			}
			a, err := certs.NewAnchor(trustDomain, validity)
			if err != nil {
				return fmt.Errorf("--trust-domain: %w", err)
			}
			if err := a.Save(out); err != nil {
				return err
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "trust anchor for %s written to %s (expires %s)\n", trustDomain, out, a.Cert.NotAfter.UTC().Format(time.DateOnly))
			return nil
		},
	}
	cmd.Flags().StringVar(&trustDomain, "trust-domain", "", "SPIFFE trust domain, e.g. bank.example")
	cmd.Flags().StringVar(&out, "out", "", "directory to write ca.crt and ca.key into")
	cmd.Flags().DurationVar(&validity, "validity", 10*365*24*time.Hour, "how long the anchor is valid")
	_ = cmd.MarkFlagRequired("trust-domain")
	_ = cmd.MarkFlagRequired("out")
	return cmd
}

// checkValidity refuses a validity the anchor cannot give: not positive,
// or past the anchor's expiry, which Issue would quietly cap, unless the
// caller accepts that; even then it is said.
func checkValidity(cmd *cobra.Command, a *certs.Anchor, validity time.Duration, allowShortened bool) error {
	if validity <= 0 {
		return fmt.Errorf("--validity must be positive, not %s", validity)
	}
	err := a.CheckValidity(validity)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, certs.ErrShortened) && allowShortened:
		fmt.Fprintf(cmd.ErrOrStderr(), "warning: %v; issued anyway (--allow-shortened)\n", err)
		return nil
	case errors.Is(err, certs.ErrShortened):
		return fmt.Errorf("--validity: %w; create a new trust anchor and rotate to it (docs/identities.md), ask for less, or pass --allow-shortened to issue it expiring with this anchor", err)
	}
	return fmt.Errorf("--ca-dir: %w", err)
}

const allowShortenedUsage = "issue even if the trust anchor expires before --validity ends: the certificate then expires with the anchor"

func newCertsIssueCmd() *cobra.Command {
	var caDir, cluster, out, bundle string
	var validity time.Duration
	var allowShortened bool
	cmd := &cobra.Command{
		Use:   "issue",
		Short: "Issue a cluster's gateway identity (tls.crt, tls.key, ca.crt)",
		Example: `  backbone certs issue --ca-dir anchor/ --cluster-name east --out east-identity/
  kubectl --context east -n backbone-system create secret generic backbone-gateway-identity --from-file=east-identity/`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			a, err := certs.LoadAnchor(caDir)
			if err != nil {
				return fmt.Errorf("--ca-dir: %w", err)
			}
			if err := checkValidity(cmd, a, validity, allowShortened); err != nil {
				return err
			}
			certPEM, keyPEM, err := a.Issue(cluster, validity)
			if err != nil {
				return fmt.Errorf("--cluster-name: %w", err)
			}
			bundlePEM := a.CertPEM()
			if bundle != "" {
				if bundlePEM, err = os.ReadFile(bundle); err != nil {
					return fmt.Errorf("--bundle: %w", err)
				}
			}
			if err := certs.WriteIdentity(out, certPEM, keyPEM, bundlePEM); err != nil {
				return err
			}
			id, _ := identity.New(a.TrustDomain, cluster)
			fmt.Fprintf(cmd.ErrOrStderr(), "identity %s written to %s\n", id, out)
			return nil
		},
	}
	cmd.Flags().StringVar(&caDir, "ca-dir", "", "trust anchor directory (from certs trust-anchor)")
	cmd.Flags().StringVar(&cluster, "cluster-name", "", "the cluster whose gateway the identity is for")
	cmd.Flags().StringVar(&out, "out", "", "directory to write tls.crt, tls.key and ca.crt into")
	cmd.Flags().StringVar(&bundle, "bundle", "", "trust bundle to write as ca.crt instead of the anchor alone (several roots during a rotation)")
	cmd.Flags().DurationVar(&validity, "validity", 90*24*time.Hour, "how long the identity is valid")
	cmd.Flags().BoolVar(&allowShortened, "allow-shortened", false, allowShortenedUsage)
	for _, f := range []string{"ca-dir", "cluster-name", "out"} {
		_ = cmd.MarkFlagRequired(f)
	}
	return cmd
}

func newCertsIssuingCACmd() *cobra.Command {
	var caDir, name, out string
	var validity time.Duration
	var allowShortened bool
	cmd := &cobra.Command{
		Use:   "issuing-ca",
		Short: "Issue a cluster's issuing CA (tls.crt, tls.key) for cert-manager's CA issuer",
		Long: `Issue a CA signed by the trust anchor that may sign gateway identities
(and nothing else: no further CAs, only URIs in the anchor's trust domain),
so that each cluster's cert-manager issues its gateway's identity while the
anchor's key stays offline. tls.crt holds the issuing CA followed by the
anchor, so cert-manager's ca.crt is the anchor every cluster shares.`,
		Example: `  backbone certs issuing-ca --ca-dir anchor/ --name east --out east-ca/
  kubectl --context east -n backbone-system create secret tls backbone-issuing-ca \
    --cert east-ca/tls.crt --key east-ca/tls.key
  kubectl --context east apply -f deploy/cert-manager/gateway-identity.yaml`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			a, err := certs.LoadAnchor(caDir)
			if err != nil {
				return fmt.Errorf("--ca-dir: %w", err)
			}
			if err := checkValidity(cmd, a, validity, allowShortened); err != nil {
				return err
			}
			certPEM, keyPEM, err := a.IssueCA(name, validity)
			if err != nil {
				return fmt.Errorf("--name: %w", err)
			}
			if err := certs.WriteKeyPair(out, certPEM, keyPEM); err != nil {
				return err
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "issuing CA %q of %s written to %s\n", name, a.TrustDomain, out)
			return nil
		},
	}
	cmd.Flags().StringVar(&caDir, "ca-dir", "", "trust anchor directory (from certs trust-anchor)")
	cmd.Flags().StringVar(&name, "name", "", "the cluster the issuing CA is for (its name in the certificate)")
	cmd.Flags().StringVar(&out, "out", "", "directory to write tls.crt and tls.key into")
	cmd.Flags().DurationVar(&validity, "validity", 365*24*time.Hour, "how long the issuing CA is valid")
	cmd.Flags().BoolVar(&allowShortened, "allow-shortened", false, allowShortenedUsage)
	for _, f := range []string{"ca-dir", "name", "out"} {
		_ = cmd.MarkFlagRequired(f)
	}
	return cmd
}
