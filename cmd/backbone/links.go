package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	"github.com/backbone-mesh/backbone/api/v1alpha1"
	"github.com/backbone-mesh/backbone/internal/kube"
	"github.com/backbone-mesh/backbone/internal/linkmatrix"
)

func init() { subcommands = append(subcommands, newLinksCmd) }

func newLinksCmd(root *rootOptions) *cobra.Command {
	var (
		contexts    []string
		allContexts bool
		output      string
		timeout     time.Duration
	)
	cmd := &cobra.Command{
		Use:   "links",
		Short: "Print the latency matrix between linked clusters",
		Long: `Reads the Link statuses the controller of each cluster writes and prints
the probe latency (p50) from every source cluster (rows) to every target
(columns). DEAD marks a link whose gateway stopped answering, ? one not
probed yet, · a pair without a Link. The source's name is its context name.`,
		Example: `  backbone links --contexts east,west,platform
  backbone links --all-contexts -o json | jq '.links[] | select(.state != "up")'`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if output != "" && output != "json" && output != "yaml" {
				return fmt.Errorf("--output %q: must be json, yaml or empty", output)
			}
			contexts, err := resolveContexts(root, contexts, allContexts)
			if err != nil {
				return err
			}
			if timeout <= 0 {
				return fmt.Errorf("--request-timeout %s: must be positive", timeout)
			}
			m := readMatrix(cmd.Context(), root.kube, contexts, timeout)
			if err := writeMatrix(cmd.OutOrStdout(), m, output); err != nil {
				return err
			}
			// Every format prints what could be read and then fails: a
			// script piping -o json must not take a partial matrix for a
			// whole one.
			if len(m.Errors) > 0 {
				return fmt.Errorf("could not read %d of %d clusters", len(m.Errors), len(contexts))
			}
			return nil
		},
	}
	cmd.Flags().StringSliceVar(&contexts, "contexts", nil, "kubeconfig contexts of the clusters to read (comma-separated)")
	cmd.Flags().BoolVar(&allContexts, "all-contexts", false, "read every context of the kubeconfig")
	cmd.Flags().StringVarP(&output, "output", "o", "", "output format: json or yaml (default: a table)")
	cmd.Flags().DurationVar(&timeout, "request-timeout", 30*time.Second,
		"how long each cluster's read may take (an exec credential plugin that asks for a login counts)")
	return cmd
}

func writeMatrix(w io.Writer, m linkmatrix.Matrix, output string) error {
	switch output {
	case "json":
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(m)
	case "yaml":
		b, err := yaml.Marshal(m)
		if err != nil {
			return err
		}
		_, err = w.Write(b)
		return err
	}
	return linkmatrix.WriteTable(w, m)
}

// readMatrix lists the Links of every context concurrently.
func readMatrix(ctx context.Context, flags kube.Flags, contexts []string, timeout time.Duration) linkmatrix.Matrix {
	var (
		mu    sync.Mutex
		wg    sync.WaitGroup
		links = map[string][]v1alpha1.Link{}
		errs  = map[string]error{}
	)
	for _, name := range contexts {
		name = strings.TrimSpace(name)
		wg.Add(1)
		go func() {
			defer wg.Done()
			f := flags
			f.Context = name
			var list v1alpha1.LinkList
			c, err := f.Client()
			if err == nil {
				// An API server that takes the connection and never answers
				// is reported as that context's error, not a hang.
				lctx, cancel := context.WithTimeout(ctx, timeout)
				err = c.List(lctx, &list, client.InNamespace(v1alpha1.SystemNamespace))
				cancel()
			}
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs[name] = err
				return
			}
			links[name] = list.Items
		}()
	}
	wg.Wait()
	return linkmatrix.Build(links, errs)
}

// resolveContexts is the clusters a multi-cluster command reads: every
// context of the kubeconfig, the ones named, or the current --context.
func resolveContexts(root *rootOptions, named []string, all bool) ([]string, error) {
	if all {
		raw, err := root.kube.ClientConfig().RawConfig()
		if err != nil {
			return nil, fmt.Errorf("loading kubeconfig: %w", err)
		}
		out := make([]string, 0, len(raw.Contexts))
		for name := range raw.Contexts {
			out = append(out, name)
		}
		slices.Sort(out)
		return out, nil
	}
	var out []string
	for _, n := range named {
		if n = strings.TrimSpace(n); n != "" {
			out = append(out, n)
		}
	}
	if len(out) == 0 {
		if root.kube.Context == "" {
			return nil, fmt.Errorf("name the clusters: --contexts a,b,c or --all-contexts")
		}
		out = []string{root.kube.Context}
	}
	return out, nil
}
