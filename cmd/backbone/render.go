package main

import (
	"fmt"
	"path/filepath"
	"sort"
	"strings"

	"github.com/spf13/cobra"

	"github.com/backbone-mesh/backbone/api/v1alpha1"
	"github.com/backbone-mesh/backbone/internal/config"
)

func init() { subcommands = append(subcommands, newRenderCmd) }

func newRenderCmd(_ *rootOptions) *cobra.Command {
	var (
		files        []string
		clusters     string
		clustersFile string
		dir          string
		check        bool
		namespace    string
	)
	cmd := &cobra.Command{
		Use:   "render",
		Short: "Render the squads' egress and ingress entries into per-cluster manifests for GitOps",
		Long: `Reads the squads' files (the targets and ingress lists, alone or inside a
shuttle.yaml), checks them all together, and writes DIR/<cluster>/ with the
EgressTarget and IngressTarget objects that cluster must hold plus a
kustomization.yaml, for a Flux Kustomization per cluster. EgressTargets go
into --namespace (default backbone-system), and with them the Services
callers use; IngressTargets always go into backbone-system.

Nothing is written when any file has an error; every error names the file
and line, and a conflict names both entries. The output is byte-for-byte
deterministic. With --check, nothing is written and the command fails when
DIR differs from what it would write (for CI in the config repository).`,
		Example: `  backbone render -f squads/maxus/shuttle.yaml -f squads/nasa/shuttle.yaml \
    --clusters east,west,platform -o clusters
  backbone render -f 'squads/*/shuttle.yaml' --clusters-file clusters.yaml -o clusters --check
  backbone render -f 'squads/*/shuttle.yaml' --clusters east,west,platform --namespace egress -o clusters`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if len(files) == 0 {
				return fmt.Errorf("no files: pass -f FILE (repeatable)")
			}
			var names []string
			var err error
			switch {
			case clusters != "" && clustersFile != "":
				return fmt.Errorf("--clusters and --clusters-file are exclusive")
			case clusters != "":
				names, err = config.ParseClusters(clusters)
			case clustersFile != "":
				names, err = config.LoadClusters(clustersFile)
			default:
				return fmt.Errorf("the known clusters are required: --clusters east,west or --clusters-file FILE")
			}
			if err != nil {
				return err
			}
			if dir == "" {
				return fmt.Errorf("--output-dir (-o) is required")
			}
			paths, err := expandFiles(files)
			if err != nil {
				return err
			}
			cfg, err := config.Load(paths, names)
			if err != nil {
				return err
			}
			out, err := config.Render(cfg, names, config.RenderOptions{EgressNamespace: namespace})
			if err != nil {
				return err
			}
			if check {
				diffs, err := config.Diff(dir, out)
				if err != nil {
					return err
				}
				if len(diffs) > 0 {
					for _, d := range diffs {
						fmt.Fprintln(cmd.ErrOrStderr(), d)
					}
					return fmt.Errorf("%s is not what backbone render writes (%d differences): run it without --check and commit the result", dir, len(diffs))
				}
				fmt.Fprintf(cmd.OutOrStdout(), "%s is up to date (%d targets, %d ingress entries, %d clusters)\n", dir, len(cfg.Targets), len(cfg.Ingress), len(names))
				return nil
			}
			if err := config.Write(dir, out); err != nil {
				return err
			}
			sort.Strings(names)
			for _, c := range names {
				fmt.Fprintf(cmd.OutOrStdout(), "%s/%s: %d objects\n", dir, c, len(out[c])-1)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringArrayVarP(&files, "file", "f", nil, "a squad's file (repeatable; shell-style globs are expanded)")
	f.StringVar(&clusters, "clusters", "", "the known clusters, comma-separated")
	f.StringVar(&clustersFile, "clusters-file", "", "a YAML file listing the known clusters")
	f.StringVarP(&dir, "output-dir", "o", "", "directory to write <cluster>/ into")
	f.BoolVar(&check, "check", false, "write nothing; fail when the directory differs from what would be written")
	f.StringVarP(&namespace, "namespace", "n", v1alpha1.SystemNamespace, "namespace of the EgressTargets, so of their Services and of the mirrors <hostName>-<environment> in linked clusters (it must exist in every cluster); IngressTargets stay in "+v1alpha1.SystemNamespace)
	return cmd
}

// expandFiles expands globs (quoted so the shell left them) and keeps the
// order given, without repeats.
func expandFiles(patterns []string) ([]string, error) {
	var out []string
	seen := map[string]bool{}
	for _, p := range patterns {
		matches := []string{p}
		if strings.ContainsAny(p, "*?[") {
			m, err := filepath.Glob(p)
			if err != nil {
				return nil, fmt.Errorf("-f %q: %v", p, err)
			}
			if len(m) == 0 {
				return nil, fmt.Errorf("-f %q matches no file", p)
			}
			matches = m
		}
		for _, m := range matches {
			if !seen[m] {
				seen[m] = true
				out = append(out, m)
			}
		}
	}
	return out, nil
}
