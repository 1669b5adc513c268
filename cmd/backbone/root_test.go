package main

import (
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/backbone-mesh/backbone/internal/kube"
)

func TestVersionJSON(t *testing.T) {
	out, _, err := run(t, "version", "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	var got map[string]any
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("version -o json is not JSON: %v\n%s", err, out)
	}
	for _, field := range []string{"version", "gitCommit", "goVersion", "platform"} {
		if s, _ := got[field].(string); s == "" {
			t.Errorf("field %q missing or empty in %s", field, out)
		}
	}
	if _, _, err := run(t, "version", "-o", "xml"); err == nil || !strings.Contains(err.Error(), "--output") {
		t.Errorf("want an error naming --output for -o xml, got %v", err)
	}
}

func writeKubeconfig(t *testing.T, contexts map[string]string) string {
	t.Helper()
	configs := map[string]*rest.Config{}
	for name, server := range contexts {
		configs[name] = &rest.Config{Host: server}
	}
	path := filepath.Join(t.TempDir(), "config")
	if err := clientcmd.WriteToFile(*kube.KubeconfigFor(configs, ""), path); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestKubeconfigFlags checks that --kubeconfig, --context and KUBECONFIG
// resolve like kubectl's.
func TestKubeconfigFlags(t *testing.T) {
	a := writeKubeconfig(t, map[string]string{"east": "https://east.example:6443", "west": "https://west.example:6443"})
	b := writeKubeconfig(t, map[string]string{"platform": "https://platform.example:6443"})

	tests := map[string]struct {
		env, kubeconfig, context string
		wantServer, wantErr      string
	}{
		"the explicit file's current context is used": {
			kubeconfig: a, wantServer: "https://east.example:6443",
		},
		"--context selects another context of the file": {
			kubeconfig: a, context: "west", wantServer: "https://west.example:6443",
		},
		"KUBECONFIG lists several files and their contexts merge": {
			env: a + string(os.PathListSeparator) + b, context: "platform", wantServer: "https://platform.example:6443",
		},
		"an unknown context is an error naming it": {
			kubeconfig: a, context: "north", wantErr: `"north"`,
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			t.Setenv("KUBECONFIG", tc.env)
			opts := &rootOptions{}
			opts.kube.Kubeconfig, opts.kube.Context = tc.kubeconfig, tc.context
			cfg, err := opts.kube.RESTConfig()
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("want error containing %s, got %v", tc.wantErr, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if cfg.Host != tc.wantServer {
				t.Errorf("server %s, want %s", cfg.Host, tc.wantServer)
			}
		})
	}
}

func TestGlobalFlagsAreParsed(t *testing.T) {
	cmd := newRootCmd()
	if err := cmd.ParseFlags([]string{"--kubeconfig", "/x", "--context", "west"}); err != nil {
		t.Fatal(err)
	}
	if got, _ := cmd.PersistentFlags().GetString("context"); got != "west" {
		t.Errorf("--context = %q", got)
	}
}

// TestGatewayRefusesNonPositiveDurations: a negative timeout would make
// every stream's answer watch fire at once, or fail every handshake; the
// gateway refuses to start, naming the flag, before it touches anything.
func TestGatewayRefusesNonPositiveDurations(t *testing.T) {
	for _, flag := range []string{"--dial-timeout", "--header-timeout", "--drain-timeout", "--egress-probe-period", "--egress-probe-timeout"} {
		cmd := newRootCmd()
		cmd.SetArgs([]string{"gateway", "--cluster-name", "west", flag, "-1s"})
		cmd.SetOut(io.Discard)
		cmd.SetErr(io.Discard)
		err := cmd.Execute()
		if err == nil || !strings.Contains(err.Error(), flag+" must be positive") {
			t.Errorf("%s -1s: %v, want it refused by name", flag, err)
		}
	}
}

// TestGatewayRefusesANegativeShutdownDelay: 0 turns the delay off; below
// it is a mistake, refused by name.
func TestGatewayRefusesANegativeShutdownDelay(t *testing.T) {
	cmd := newRootCmd()
	cmd.SetArgs([]string{"gateway", "--cluster-name", "west", "--shutdown-delay", "-1s"})
	cmd.SetOut(io.Discard)
	cmd.SetErr(io.Discard)
	if err := cmd.Execute(); err == nil || !strings.Contains(err.Error(), "--shutdown-delay must not be negative") {
		t.Errorf("--shutdown-delay -1s: %v, want it refused by name", err)
	}
}

// TestControllerRefusesOverlappingPortRanges: mirrors and egress targets
// get ports on the same gateway addresses; ranges that overlap would hand
// one port to both. Refused before the controller touches anything.
func TestControllerRefusesOverlappingPortRanges(t *testing.T) {
	for _, c := range []struct{ mirrors, egress string }{
		{"20000-29999", "29999-30999"},
		{"20000-29999", "10000-20000"},
		{"20000-29999", "25000-25010"},
		{"25000-25010", "20000-29999"},
	} {
		cmd := newRootCmd()
		cmd.SetArgs([]string{"controller", "--cluster-name", "west", "--gateway-port-range", c.mirrors, "--egress-port-range", c.egress})
		cmd.SetOut(io.Discard)
		cmd.SetErr(io.Discard)
		if err := cmd.Execute(); err == nil || !strings.Contains(err.Error(), "overlap") {
			t.Errorf("%s and %s: %v, want them refused as overlapping", c.mirrors, c.egress, err)
		}
	}
}

// TestGatewayRefusesAZeroEgressFailureThreshold: below one probe the
// threshold means nothing; refused by name.
func TestGatewayRefusesAZeroEgressFailureThreshold(t *testing.T) {
	cmd := newRootCmd()
	cmd.SetArgs([]string{"gateway", "--cluster-name", "west", "--egress-probe-failure-threshold", "0"})
	cmd.SetOut(io.Discard)
	cmd.SetErr(io.Discard)
	if err := cmd.Execute(); err == nil || !strings.Contains(err.Error(), "--egress-probe-failure-threshold must be at least 1") {
		t.Errorf("--egress-probe-failure-threshold 0: %v, want it refused by name", err)
	}
}
