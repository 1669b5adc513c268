package config

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"

	"github.com/backbone-mesh/backbone/config/crd"
)

// targetFile is a file with one target; extra lines go at the end of the
// entry (line 6 on).
func targetFile(hostName, dnsName, environment string, extra ...string) string {
	s := fmt.Sprintf("targets:\n  - hostName: %s\n    dnsName: %s\n    environment: %s\n    squad: maxus\n", hostName, dnsName, environment)
	for _, e := range extra {
		s += "    " + e + "\n"
	}
	return s
}

// ingressFile is a file with one ingress entry; extra lines go at the end
// of the entry (line 7 on).
func ingressFile(service, namespace, cluster string, extra ...string) string {
	s := fmt.Sprintf("ingress:\n  - service: %s\n    namespace: %s\n    cluster: %s\n    squad: nasa\n    port: 80\n", service, namespace, cluster)
	for _, e := range extra {
		s += "    " + e + "\n"
	}
	return s
}

// parseError is the first error Parse finds in file, or "".
func parseError(t *testing.T, file string) string {
	t.Helper()
	_, err := Parse("f.yaml", []byte(file))
	if err == nil {
		return ""
	}
	var errs Errors
	if !errors.As(err, &errs) {
		t.Fatalf("error %T is not Errors: %v", err, err)
	}
	return errs[0].Error()
}

// TestNamesTheClusterWouldRefuseAreRefused: render must not write an
// object the API server refuses when Flux applies it, nor one whose
// Service or label the controller can never make; each error names the
// file, the entry and the field.
func TestNamesTheClusterWouldRefuseAreRefused(t *testing.T) {
	a := func(n int) string { return strings.Repeat("a", n) }
	b := func(n int) string { return strings.Repeat("b", n) }
	for name, tc := range map[string]struct {
		file string
		want string // prefix of the first error; "" when the file is fine
	}{
		"a hostName starting with a digit cannot name a Service": {
			file: targetFile("3scale", "api.3scale.net", "east"),
			want: `f.yaml:2: hostName: "3scale" is not a valid Service name (RFC 1035 label): a DNS-1035 label must consist of`,
		},
		"a hostName whose mirror name is 64 characters is refused": {
			file: targetFile(a(30), "a.example.com", b(33)),
			want: fmt.Sprintf(`f.yaml:2: hostName: target %q in environment %s is mirrored as %q in linked clusters, which is not a valid Service name: must be no more than 63 characters`, a(30), b(33), a(30)+"-"+b(33)),
		},
		"a hostName whose mirror name is 63 characters is accepted": {
			file: targetFile(a(30), "a.example.com", b(32)),
		},
		"an environment longer than the CRDs allow is refused": {
			file: targetFile("resource-a", "a.example.com", b(41)),
			want: fmt.Sprintf(`f.yaml:4: environment: %q is not a valid cluster name: must be no more than 40 characters`, b(41)),
		},
		"an IngressTarget name of 64 characters cannot be a label value": {
			file: ingressFile(a(29), b(29), "west"),
			want: fmt.Sprintf(`f.yaml:2: ingress for %s/%s in west: service, namespace and cluster make the IngressTarget name %q, which cannot be a label value: must be no more than 63 bytes`, b(29), a(29), a(29)+"-"+b(29)+"-west"),
		},
		"an IngressTarget name of 63 characters is accepted": {
			file: ingressFile(a(29), b(28), "west"),
		},
		"a cluster longer than the CRDs allow is refused": {
			file: ingressFile("service-a", "services", b(41)),
			want: fmt.Sprintf(`f.yaml:4: cluster: %q is not a valid cluster name: must be no more than 40 characters`, b(41)),
		},
		"an exposeFrom longer than the CRDs allow is refused": {
			file: ingressFile("service-a", "services", "west", "exposeFrom: "+b(41)),
			want: fmt.Sprintf(`f.yaml:7: exposeFrom: %q is not a valid cluster name: must be no more than 40 characters`, b(41)),
		},
	} {
		t.Run(name, func(t *testing.T) {
			got := parseError(t, tc.file)
			if tc.want == "" && got != "" {
				t.Fatalf("refused: %s", got)
			}
			if !strings.HasPrefix(got, tc.want) {
				t.Fatalf("error:\n  %s\nwant prefix:\n  %s", got, tc.want)
			}
		})
	}
}

// TestIPLiteralsAreRefusedAsDNSNames: the gateway sends dnsName as SNI and
// Host and an ingress host goes to DNS and a certificate; an address in
// their place is a mistake at best and, as the cloud metadata address, an
// attempt at the gateway's own network at worst.
func TestIPLiteralsAreRefusedAsDNSNames(t *testing.T) {
	for name, tc := range map[string]struct {
		file string
		want string
	}{
		"the cloud metadata address": {
			file: targetFile("resource-a", "169.254.169.254", "east"),
			want: `f.yaml:3: dnsName: "169.254.169.254" is an IP address, not a DNS name`,
		},
		"loopback": {
			file: targetFile("resource-a", "127.0.0.1", "east"),
			want: `f.yaml:3: dnsName: "127.0.0.1" is an IP address, not a DNS name`,
		},
		"an address in the short form resolvers accept": {
			file: targetFile("resource-a", "127.1", "east"),
			want: `f.yaml:3: dnsName: "127.1" ends in a numeric label, which resolvers read as an IP address`,
		},
		"an ingress host": {
			file: ingressFile("service-a", "services", "west", "host: 10.0.0.1"),
			want: `f.yaml:7: host: "10.0.0.1" is an IP address, not a DNS name`,
		},
	} {
		t.Run(name, func(t *testing.T) {
			if got := parseError(t, tc.file); !strings.HasPrefix(got, tc.want) {
				t.Fatalf("error:\n  %s\nwant prefix:\n  %s", got, tc.want)
			}
		})
	}
	// A digit may still start or end any label but the last.
	if got := parseError(t, targetFile("resource-a", "1.api.3scale.net", "east")); got != "" {
		t.Fatalf("refused: %s", got)
	}
}

// TestAProbePathTheProbeCannotRequestIsRefused: the probe requests
// https://<dnsName><probePath>; a path that is not a valid request path
// would fail every probe forever, or request another path than written.
func TestAProbePathTheProbeCannotRequestIsRefused(t *testing.T) {
	for name, tc := range map[string]struct {
		path string
		want string
	}{
		"a bad percent escape": {
			path: "/status%zz",
			want: `f.yaml:6: probePath: "/status%zz" is not a valid request path: invalid URL escape "%zz"`,
		},
		"a fragment, which is never sent": {
			path: "/status#ready",
			want: `f.yaml:6: probePath: "/status#ready" holds a fragment (#), which is never sent`,
		},
		"a valid escape and a query are fine": {
			path: "/status%20page?full=1",
		},
	} {
		t.Run(name, func(t *testing.T) {
			got := parseError(t, targetFile("resource-a", "a.example.com", "east", fmt.Sprintf("probePath: %q", tc.path)))
			if tc.want == "" && got != "" {
				t.Fatalf("refused: %s", got)
			}
			if !strings.HasPrefix(got, tc.want) {
				t.Fatalf("error:\n  %s\nwant prefix:\n  %s", got, tc.want)
			}
		})
	}
}

// TestTwoTargetsClaimingOneServiceAreRefused: a cluster's egress namespace
// holds the Service of each target of its environment and the mirror
// <hostName>-<environment> of every target elsewhere; two of them with one
// name would be one Service that the controller and the mirror fight over.
func TestTwoTargetsClaimingOneServiceAreRefused(t *testing.T) {
	target := func(file, hostName, environment, squad string) *File {
		t.Helper()
		f, err := Parse(file, []byte(fmt.Sprintf("targets:\n  - hostName: %s\n    dnsName: %s.example.com\n    environment: %s\n    squad: %s\n", hostName, hostName, environment, squad)))
		if err != nil {
			t.Fatal(err)
		}
		return f
	}
	for name, tc := range map[string]struct {
		files    []*File
		clusters []string
		want     string // "" when they do not collide
	}{
		"a target's Service and another environment's mirror": {
			files: []*File{
				target("squads/maxus.yaml", "payments-east", "west", "maxus"),
				target("squads/nasa.yaml", "payments", "east", "nasa"),
			},
			clusters: clusters,
			want:     `squads/nasa.yaml:2: Service payments-east in the egress namespace of west would be both the mirror of target "payments" in environment east (squad nasa) and the Service of target "payments-east" in environment west (squad maxus) at squads/maxus.yaml:2`,
		},
		"two mirrors in a third cluster": {
			files: []*File{
				target("squads/maxus.yaml", "db-west", "platform", "maxus"),
				target("squads/nasa.yaml", "db", "west-platform", "nasa"),
			},
			clusters: []string{"east", "platform", "west-platform"},
			want:     `squads/nasa.yaml:2: Service db-west-platform in the egress namespace of east would be both the mirror of target "db" in environment west-platform (squad nasa) and the mirror of target "db-west" in environment platform (squad maxus) at squads/maxus.yaml:2`,
		},
		"the same two mirrors without a third cluster to meet in": {
			files: []*File{
				target("squads/maxus.yaml", "db-west", "platform", "maxus"),
				target("squads/nasa.yaml", "db", "west-platform", "nasa"),
			},
			clusters: []string{"platform", "west-platform"},
		},
		"a target and another named like its own mirror in its own environment": {
			files: []*File{
				target("squads/maxus.yaml", "payments-east", "east", "maxus"),
				target("squads/nasa.yaml", "payments", "east", "nasa"),
			},
			clusters: clusters,
		},
	} {
		t.Run(name, func(t *testing.T) {
			cfg, err := Check(tc.files, tc.clusters)
			if tc.want == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("no error, config %+v", cfg)
			}
			if got := err.Error(); got != tc.want {
				t.Fatalf("error:\n  %s\nwant:\n  %s", got, tc.want)
			}
		})
	}
}

// TestClustersFileErrorsKeepTheirPosition: a broken clusters file is
// found by its line (and column, where the YAML parser gives one), like a
// squad's file.
func TestClustersFileErrorsKeepTheirPosition(t *testing.T) {
	dir := t.TempDir()
	for name, tc := range map[string]struct {
		content string
		want    string
	}{
		"a syntax error": {
			content: "clusters:\n  - east\n  - west\n bad: [\n",
			want:    `c.yaml:3: invalid YAML: did not find expected key`,
		},
		"a name that is not a cluster's": {
			content: "- east\n- West\n",
			want:    `c.yaml:2:3: cluster name "West": a lowercase RFC 1123 label must consist of`,
		},
		"an indented item read as part of the name above it": {
			content: "- east\n- west\n  - platform\n",
			want:    `c.yaml:2:3: cluster name "west - platform"`,
		},
		"an entry that is not a name": {
			content: "clusters:\n  - east\n  - [west]\n",
			want:    `c.yaml:3:5: clusters entry must be a name`,
		},
		"clusters that are not a list": {
			content: "clusters: east\n",
			want:    `c.yaml:1:11: clusters must be a list of names`,
		},
	} {
		t.Run(name, func(t *testing.T) {
			p := filepath.Join(dir, "c.yaml")
			if err := os.WriteFile(p, []byte(tc.content), 0o644); err != nil {
				t.Fatal(err)
			}
			_, err := LoadClusters(p)
			if err == nil {
				t.Fatal("no error")
			}
			if got := strings.TrimPrefix(err.Error(), dir+string(filepath.Separator)); !strings.HasPrefix(got, tc.want) {
				t.Fatalf("error:\n  %s\nwant prefix:\n  %s", got, tc.want)
			}
		})
	}
}

// TestClusterNamesAreBoundByTheCRDs: a cluster's name is as long as the
// CRDs let environment, cluster, exposeFrom and targetClusterName be, and
// no longer; render, --clusters and --clusters-file all hold to it.
func TestClusterNamesAreBoundByTheCRDs(t *testing.T) {
	limit := 0
	fields := map[string]bool{"environment": true, "cluster": true, "exposeFrom": true, "targetClusterName": true}
	err := fs.WalkDir(crd.Bases, ".", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := crd.Bases.ReadFile(path)
		if err != nil {
			return err
		}
		var doc map[string]any
		if err := yaml.Unmarshal(b, &doc); err != nil {
			return err
		}
		var walk func(name string, v any)
		walk = func(name string, v any) {
			switch v := v.(type) {
			case map[string]any:
				if fields[name] {
					maxLen, ok := v["maxLength"].(float64)
					if !ok {
						t.Errorf("%s: %s has no maxLength", path, name)
					} else if limit != 0 && int(maxLen) != limit {
						t.Errorf("%s: %s's maxLength is %v, another cluster field's %d", path, name, maxLen, limit)
					}
					limit = int(maxLen)
				}
				for k, sub := range v {
					walk(k, sub)
				}
			case []any:
				for _, sub := range v {
					walk(name, sub)
				}
			}
		}
		walk("", doc)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if limit == 0 {
		t.Fatal("no cluster field found in the CRDs")
	}
	longest, tooLong := strings.Repeat("c", limit), strings.Repeat("c", limit+1)
	if _, err := ParseClusters("east," + longest); err != nil {
		t.Errorf("--clusters refuses a name of %d characters: %v", limit, err)
	}
	if _, err := ParseClusters("east," + tooLong); err == nil || !strings.Contains(err.Error(), tooLong) {
		t.Errorf("--clusters accepts a name of %d characters: %v", limit+1, err)
	}
	p := filepath.Join(t.TempDir(), "c.yaml")
	if err := os.WriteFile(p, []byte("- east\n- "+tooLong+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadClusters(p); err == nil || !strings.Contains(err.Error(), "c.yaml:2:3:") {
		t.Errorf("--clusters-file accepts a name of %d characters: %v", limit+1, err)
	}
	if got := parseError(t, targetFile("resource-a", "a.example.com", longest)); got != "" {
		t.Errorf("an environment of %d characters is refused: %s", limit, got)
	}
	if got := parseError(t, targetFile("resource-a", "a.example.com", tooLong)); !strings.Contains(got, "environment:") {
		t.Errorf("an environment of %d characters is accepted: %q", limit+1, got)
	}
}
