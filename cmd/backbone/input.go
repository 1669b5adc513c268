package main

import (
	"io"
	"os"

	"github.com/spf13/cobra"
)

// readFileOrStdin reads path, or the command's stdin for "-".
func readFileOrStdin(cmd *cobra.Command, path string) ([]byte, error) {
	if path == "-" {
		return io.ReadAll(cmd.InOrStdin())
	}
	return os.ReadFile(path)
}
