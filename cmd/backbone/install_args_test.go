package main

import (
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/backbone-mesh/backbone/internal/install"
)

// TestInstalledArgsAreAccepted: every Deployment `backbone install` renders
// runs a subcommand with flags the binary really has, so a renamed flag
// cannot ship a crash-looping install.
func TestInstalledArgsAreAccepted(t *testing.T) {
	v := install.DefaultValues()
	v.ClusterName, v.TrustDomain = "east", "bank.example"
	objs, err := install.Objects(v)
	if err != nil {
		t.Fatal(err)
	}
	seen := 0
	for _, o := range objs {
		if o.GetKind() != "Deployment" {
			continue
		}
		containers, _, _ := unstructured.NestedSlice(o.Object, "spec", "template", "spec", "containers")
		for _, c := range containers {
			var args []string
			for _, a := range c.(map[string]any)["args"].([]any) {
				args = append(args, a.(string))
			}
			root := newRootCmd()
			sub, rest, err := root.Find(args)
			if err != nil || sub == root {
				t.Fatalf("%s: %v: no subcommand %q", o.GetName(), err, args[0])
			}
			if err := sub.ParseFlags(rest); err != nil {
				t.Errorf("%s: backbone %v: %v", o.GetName(), args, err)
			}
			seen++
		}
	}
	if seen != 2 {
		t.Fatalf("checked %d containers, want the controller's and the gateway's", seen)
	}
}
