package link

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"

	"github.com/backbone-mesh/backbone/internal/install"
)

// Print renders objects as YAML documents or, for "json", one v1 List
// (which kubectl apply -f accepts).
func Print(format string, objs ...runtime.Object) ([]byte, error) {
	var us []*unstructured.Unstructured
	for _, o := range objs {
		u, err := install.ToUnstructured(o)
		if err != nil {
			return nil, err
		}
		us = append(us, u)
	}
	switch format {
	case "", "yaml":
		return install.MarshalYAML(us)
	case "json":
		items := make([]any, 0, len(us))
		for _, u := range us {
			items = append(items, u.Object)
		}
		out, err := json.MarshalIndent(map[string]any{"apiVersion": "v1", "kind": "List", "items": items}, "", "  ")
		if err != nil {
			return nil, err
		}
		return append(out, '\n'), nil
	default:
		return nil, fmt.Errorf("--output %q: must be yaml or json", format)
	}
}

// WriteSecretFile writes data readable by its owner only, replacing the
// file atomically so a half-written credential never exists under its name.
func WriteSecretFile(path string, data []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".backbone-link-*")
	if err != nil {
		return err
	}
	defer func() { _ = os.Remove(tmp.Name()) }()
	if err := tmp.Chmod(0o600); err != nil {
		_ = tmp.Close()
		return err
	}
	if _, err := tmp.Write(data); err != nil {
		_ = tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}
