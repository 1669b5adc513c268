package main

import (
	"encoding/json"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/backbone-mesh/backbone/internal/version"
)

func init() { subcommands = append(subcommands, newVersionCmd) }

func newVersionCmd(*rootOptions) *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:     "version",
		Short:   "Print the version, git commit and Go version of this build",
		Example: "  backbone version\n  backbone version -o json | jq -r .gitCommit",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			info := version.Get()
			switch output {
			case "":
				dirty := ""
				if info.GitDirty {
					dirty = " (modified)"
				}
				_, err := fmt.Fprintf(cmd.OutOrStdout(), "backbone %s\ncommit: %s%s\ngo: %s\nplatform: %s\n",
					info.Version, info.GitCommit, dirty, info.GoVersion, info.Platform)
				return err
			case "json":
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(info)
			default:
				return fmt.Errorf("--output %q: must be json or empty", output)
			}
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "", "output format: json")
	return cmd
}
