package main

import (
	"net"
	"strconv"
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

// TestGatewayAdminDefaultIsWhereTheControllerLooks: a gateway started with
// its defaults serves its egress probes on the port a controller started
// with its defaults reads them from — the installed admin port.
func TestGatewayAdminDefaultIsWhereTheControllerLooks(t *testing.T) {
	root := newRootCmd()
	defaultOf := func(command, flag string) string {
		t.Helper()
		sub, _, err := root.Find([]string{command})
		if err != nil || sub == root {
			t.Fatalf("no subcommand %q: %v", command, err)
		}
		f := sub.Flags().Lookup(flag)
		if f == nil {
			t.Fatalf("backbone %s has no --%s", command, flag)
		}
		return f.DefValue
	}
	_, gatewayPort, err := net.SplitHostPort(defaultOf("gateway", "admin-address"))
	if err != nil {
		t.Fatal(err)
	}
	controllerPort := defaultOf("controller", "gateway-admin-port")
	if want := strconv.Itoa(install.AdminPort); gatewayPort != want || controllerPort != want {
		t.Errorf("gateway --admin-address port %s, controller --gateway-admin-port %s: want both %s (install.AdminPort)", gatewayPort, controllerPort, want)
	}
}
