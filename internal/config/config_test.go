package config

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"flag"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/util/validation"
)

var update = flag.Bool("update", false, "rewrite the golden files")

var clusters = []string{"east", "west", "platform"}

var caPEM = selfSigned()

const brokenPEM = `-----BEGIN CERTIFICATE-----
MIIBVzCB/qADAgECAhEAhlvBJ5RGOxcEwFPEivmBODAKBggqhkjOPQQDAjAUMRIw
EAYDVQQDEwl0ZXN0LXJvb3QwHhcNMjYwMTAxMDAwMDAwWhcNMzYwMTAxMDAwMDAw
WjAUMRIwEAYDVQQDEwl0ZXN0LXJvb3QwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNC
AAR6nu0TXrCKzo3vhL2rRUFEC2gcoTvWzKWSc3G5Q/8T/+xrP/D3iY2z3VHgFvMz
Xo1uyWldn4iTW5CHS0a1tU1ToyMwITAOBgNVHQ8BAf8EBAMCAgQwDwYDVR0TAQH/
BAUwAwEB/zAKBggqhkjOPQQDAgNIADBFAiEA3XgVmnY8xUmgW+r0UqwR5G9F3Vhx
q2U3l2gx0Nq9JAECIBS3ydqJhtPwHhm9zwbl3mL5WVA5GtVE6cyq3iP0Kkx7
-----END CERTIFICATE-----`

func selfSigned() string {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		panic(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test-root"},
		NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		panic(err)
	}
	return strings.TrimSpace(string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})))
}

// TestParseErrors: every broken file gets the exact error, with its line.
func TestParseErrors(t *testing.T) {
	for _, tc := range []struct {
		name, file, want string
	}{
		{"unknown key in target", `targets:
  - hostName: a
    dnsName: a.example.com
    environment: east
    squad: maxus
    dnsname: b.example.com
`, `f.yaml:6: unknown key "dnsname" in targets entry; did you mean "dnsName"?`},
		{"missing dnsName", `targets:
  - hostName: a
    environment: east
    squad: maxus
`, `f.yaml:2: targets entry: dnsName is required`},
		{"bad hostName", `targets:
  - hostName: Resource_A
    dnsName: a.example.com
    environment: east
    squad: maxus
`, `f.yaml:2: hostName: "Resource_A" is not a valid Service name (RFC 1035 label)`},
		{"bad dnsName", `targets:
  - hostName: a
    dnsName: a..example.com
    environment: east
    squad: maxus
`, `f.yaml:3: dnsName: "a..example.com" is not a valid DNS name (RFC 1123)`},
		{"single-label dnsName", `targets:
  - hostName: a
    dnsName: localhost
    environment: east
    squad: maxus
`, `f.yaml:3: dnsName: "localhost" is not a fully qualified DNS name`},
		{"port out of range", `ingress:
  - service: service-a
    namespace: services
    cluster: west
    squad: nasa
    port: 70000
`, `f.yaml:6: port: 70000 is out of range 1-65535`},
		{"port as text", `ingress:
  - service: service-a
    namespace: services
    cluster: west
    squad: nasa
    port: "http"
`, `f.yaml:6: port: "http" is not a port number`},
		{"missing ingress port", `ingress:
  - service: service-a
    namespace: services
    cluster: west
    squad: nasa
`, `f.yaml:2: ingress entry: port is required`},
		{"bad protocol", `targets:
  - hostName: a
    dnsName: a.example.com
    environment: east
    squad: maxus
    protocol: udp
`, `f.yaml:6: protocol: "udp" is not one of https, tls, tcp`},
		{"bad CA bundle", `targets:
  - hostName: a
    dnsName: a.example.com
    environment: east
    squad: maxus
    caBundle: not a certificate
`, `f.yaml:6: caBundle: holds no PEM certificate`},
		{"broken certificate", "targets:\n  - hostName: a\n    dnsName: a.example.com\n    environment: east\n    squad: maxus\n    caBundle: |\n" + indent(brokenPEM, "      ") + "\n",
			`f.yaml:6: caBundle: certificate 1: x509: malformed certificate`},
		{"probe path", `targets:
  - hostName: a
    dnsName: a.example.com
    environment: east
    squad: maxus
    probePath: healthz
`, `f.yaml:6: probePath: "healthz" must be a path starting with /`},
		{"targets not a list", `targets:
  hostName: a
`, `f.yaml:2: targets must be a list of entries`},
		{"entry not a mapping", `targets:
  - resource-a
`, `f.yaml:2: targets entry must be a mapping`},
		{"nested value", `targets:
  - hostName: [a, b]
    dnsName: a.example.com
    environment: east
    squad: maxus
`, `f.yaml:2: hostName must be a single value`},
		{"repeated key", `targets:
  - hostName: a
    hostName: b
    dnsName: a.example.com
    environment: east
    squad: maxus
`, `f.yaml:3: key "hostName" repeated (first at line 2)`},
		{"near-miss top-level key", `target:
  - hostName: a
`, `f.yaml:1: unknown key "target"; did you mean "targets"?`},
		{"syntax", "targets:\n  - hostName: a\n    dnsName: \"b\n", `f.yaml:3: invalid YAML: found unexpected end of stream`},
		{"two documents", "targets: []\n---\ningress: []\n", `f.yaml:2: more than one YAML document`},
		{"not a mapping", "- a\n- b\n", `f.yaml:1: the file must be a mapping with targets and/or ingress lists`},
		{"bad squad", `targets:
  - hostName: a
    dnsName: a.example.com
    environment: east
    squad: "max us"
`, `f.yaml:5: squad: "max us" cannot be a label value`},
		{"bad service name", `ingress:
  - service: 1service
    namespace: services
    cluster: west
    squad: nasa
    port: 80
`, `f.yaml:2: service: "1service" is not a valid Service name`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("f.yaml", []byte(tc.file))
			if err == nil {
				t.Fatalf("no error; want %q", tc.want)
			}
			var errs Errors
			if !errors.As(err, &errs) {
				t.Fatalf("error %T is not Errors: %v", err, err)
			}
			if !strings.HasPrefix(errs[0].Error(), tc.want) {
				t.Fatalf("error:\n  %v\nwant prefix:\n  %s", err, tc.want)
			}
		})
	}
}

func TestCheckErrors(t *testing.T) {
	parse := func(name, s string) *File {
		t.Helper()
		f, err := Parse(name, []byte(s))
		if err != nil {
			t.Fatal(err)
		}
		return f
	}
	maxus := parse("squads/maxus.yaml", `targets:
  - hostName: resource-a
    dnsName: resource-a.azurewebsites.net
    environment: east
    squad: maxus
ingress:
  - service: service-a
    namespace: services
    cluster: west
    squad: maxus
    port: 3000
    host: a.example.com
`)
	for _, tc := range []struct {
		name  string
		other string
		want  string
	}{
		{"same target in an environment", `
targets:
  - hostName: resource-a
    dnsName: other.azurewebsites.net
    environment: east
    squad: nasa
`, `squads/nasa.yaml:3: target "resource-a" in environment east (squad nasa) is also declared at squads/maxus.yaml:2 (squad maxus)`},
		{"same ingress host", `ingress:
  - service: service-b
    namespace: services
    cluster: east
    squad: nasa
    port: 80
    host: a.example.com
`, `squads/nasa.yaml:2: ingress for services/service-b in east (squad nasa) claims host "a.example.com", already claimed at squads/maxus.yaml:7 by services/service-a in west (squad maxus)`},
		{"unknown environment", `targets:
  - hostName: resource-b
    dnsName: b.example.com
    environment: north
    squad: nasa
`, `squads/nasa.yaml:2: environment: unknown cluster "north" (known clusters: east, west, platform)`},
		{"unknown exposeFrom", `ingress:
  - service: service-b
    namespace: services
    cluster: east
    squad: nasa
    port: 80
    exposeFrom: edge
`, `squads/nasa.yaml:2: exposeFrom: unknown cluster "edge" (known clusters: east, west, platform)`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := Check([]*File{maxus, parse("squads/nasa.yaml", tc.other)}, clusters)
			if err == nil {
				t.Fatalf("no error, config %+v", cfg)
			}
			if got := err.Error(); got != tc.want {
				t.Fatalf("error:\n  %s\nwant:\n  %s", got, tc.want)
			}
		})
	}
	// The same target name in two environments is two targets.
	other := parse("squads/nasa.yaml", `targets:
  - hostName: resource-a
    dnsName: resource-a.azurewebsites.net
    environment: west
    squad: nasa
`)
	if _, err := Check([]*File{maxus, other}, clusters); err != nil {
		t.Fatal(err)
	}
}

func TestDefaultsAndCABundle(t *testing.T) {
	f, err := Parse("f.yaml", []byte("targets:\n  - hostName: a\n    dnsName: a.example.com\n    environment: east\n    squad: maxus\n    caBundle: |\n"+indent(caPEM, "      ")+"\n"))
	if err != nil {
		t.Fatal(err)
	}
	got := f.Targets[0]
	if got.Port != 443 || got.Protocol != "https" || got.ProbePath != "/" || !strings.Contains(got.CABundle, "BEGIN CERTIFICATE") {
		t.Fatalf("defaults: %+v", got)
	}
	if f, err := Parse("empty.yaml", nil); err != nil || len(f.Targets)+len(f.Ingress) != 0 {
		t.Fatalf("empty file: %v %+v", err, f)
	}
}

func indent(s, prefix string) string {
	return prefix + strings.ReplaceAll(s, "\n", "\n"+prefix)
}

// TestRenderGolden renders the seed's file and a platform squad's file
// into testdata/golden; two runs are byte-identical and --check agrees.
func TestRenderGolden(t *testing.T) {
	paths := []string{"testdata/seed.yaml", "testdata/platform.yaml"}
	cfg, err := Load(paths, clusters)
	if err != nil {
		t.Fatal(err)
	}
	out, err := Render(cfg, clusters, RenderOptions{})
	if err != nil {
		t.Fatal(err)
	}
	again, _ := Render(cfg, clusters, RenderOptions{})
	for c, files := range out {
		for name, b := range files {
			if string(again[c][name]) != string(b) {
				t.Fatalf("%s/%s differs between two renders", c, name)
			}
		}
	}
	golden := filepath.Join("testdata", "golden")
	if *update {
		if err := Write(golden, out); err != nil {
			t.Fatal(err)
		}
	}
	diffs, err := Diff(golden, out)
	if err != nil {
		t.Fatal(err)
	}
	if len(diffs) > 0 {
		t.Fatalf("rendered output differs from %s (go test ./internal/config -update):\n%s", golden, strings.Join(diffs, "\n"))
	}
	for _, c := range clusters {
		for name, b := range out[c] {
			for _, bad := range []string{"creationTimestamp", "status:", "null", "{}"} {
				if strings.Contains(string(b), bad) {
					t.Errorf("%s/%s holds %q:\n%s", c, name, bad, b)
				}
			}
		}
	}

	// Write into a fresh directory beside a file render does not own, then
	// drop an entry: its file goes, the other file stays, --check agrees.
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "east"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "east", "flux-system.yaml"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := Write(dir, out); err != nil {
		t.Fatal(err)
	}
	cfg.Targets = cfg.Targets[1:]
	smaller, _ := Render(cfg, clusters, RenderOptions{})
	diffs, _ = Diff(dir, smaller)
	if len(diffs) != 2 { // the removed target's file, the kustomization
		t.Fatalf("diffs after dropping a target: %v", diffs)
	}
	if err := Write(dir, smaller); err != nil {
		t.Fatal(err)
	}
	if diffs, _ := Diff(dir, smaller); len(diffs) != 0 {
		t.Fatalf("diffs after writing: %v", diffs)
	}
	if _, err := os.Stat(filepath.Join(dir, "east", "flux-system.yaml")); err != nil {
		t.Fatalf("render removed a file it does not own: %v", err)
	}
}

// renderSeed renders the seed squads' files for the test clusters.
func renderSeed(t *testing.T) Output {
	t.Helper()
	cfg, err := Load([]string{"testdata/seed.yaml", "testdata/platform.yaml"}, clusters)
	if err != nil {
		t.Fatal(err)
	}
	out, err := Render(cfg, clusters, RenderOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestRenderRefusesFilesItDidNotWrite: a kustomization.yaml of one's own
// (the one `flux bootstrap` writes in its cluster directory) is refused,
// naming it, and nothing is written; a hand-written file under a name
// render uses, no longer rendered, is kept; --check reports the first.
func TestRenderRefusesFilesItDidNotWrite(t *testing.T) {
	out := renderSeed(t)
	dir := t.TempDir()
	east := filepath.Join(dir, "east")
	if err := os.MkdirAll(east, 0o755); err != nil {
		t.Fatal(err)
	}
	own := "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources: [flux-system, mine.yaml]\n"
	kustomization := filepath.Join(east, "kustomization.yaml")
	if err := os.WriteFile(kustomization, []byte(own), 0o644); err != nil {
		t.Fatal(err)
	}
	mine := filepath.Join(east, "egresstarget-mine.yaml")
	if err := os.WriteFile(mine, []byte("kind: EgressTarget\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	err := Write(dir, out)
	if err == nil || !strings.Contains(err.Error(), kustomization) || !strings.Contains(err.Error(), "not written by backbone render") {
		t.Fatalf("Write over a kustomization.yaml of one's own: %v", err)
	}
	if b, _ := os.ReadFile(kustomization); string(b) != own {
		t.Errorf("the kustomization.yaml was changed:\n%s", b)
	}
	if entries, _ := os.ReadDir(east); len(entries) != 2 {
		t.Errorf("%d files in east after a refused write, want the 2 there before", len(entries))
	}
	for _, c := range clusters {
		if _, err := os.Stat(filepath.Join(dir, c)); c != "east" && err == nil {
			t.Errorf("%s was written after a refused write", c)
		}
	}
	diffs, err := Diff(dir, out)
	if err != nil || !slices.Contains(diffs, kustomization+": not written by backbone render") {
		t.Errorf("diffs %q, %v", diffs, err)
	}

	// Without the kustomization in the way, render writes its own and
	// keeps the hand-written file it does not render.
	if err := os.Remove(kustomization); err != nil {
		t.Fatal(err)
	}
	if err := Write(dir, out); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(mine); err != nil {
		t.Errorf("a hand-written file was removed: %v", err)
	}
	if diffs, _ := Diff(dir, out); len(diffs) != 0 {
		t.Errorf("diffs after writing: %q", diffs)
	}
}

// TestRenderOwnsOnlyRegularFilesItWrote: a file render wrote, checked out
// with CRLF line endings, is still render's (rewritten, and the same to
// --check); a symbolic link or a directory under a name render writes is
// refused, naming what it is, and a dangling link's target is not made.
func TestRenderOwnsOnlyRegularFilesItWrote(t *testing.T) {
	out := renderSeed(t)
	dir := t.TempDir()
	if err := Write(dir, out); err != nil {
		t.Fatal(err)
	}
	kustomization := filepath.Join(dir, "east", "kustomization.yaml")
	crlf := bytes.ReplaceAll(out["east"]["kustomization.yaml"], []byte("\n"), []byte("\r\n"))
	if err := os.WriteFile(kustomization, crlf, 0o644); err != nil {
		t.Fatal(err)
	}
	if diffs, err := Diff(dir, out); err != nil || len(diffs) != 0 {
		t.Errorf("a CRLF checkout of the render: diffs %q, %v", diffs, err)
	}
	if err := Write(dir, out); err != nil {
		t.Errorf("writing over a CRLF checkout of the render: %v", err)
	}

	// A dangling link where the kustomization goes.
	outside := filepath.Join(t.TempDir(), "elsewhere.yaml")
	if err := os.Remove(kustomization); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outside, kustomization); err != nil {
		t.Fatal(err)
	}
	if err := Write(dir, out); err == nil || !strings.Contains(err.Error(), kustomization+" (a symbolic link)") {
		t.Errorf("Write over a symbolic link: %v", err)
	}
	if _, err := os.Stat(outside); err == nil {
		t.Error("Write made the link's target")
	}
	// A directory where a target's file goes.
	if err := os.Remove(kustomization); err != nil {
		t.Fatal(err)
	}
	var name string
	for n := range out["east"] {
		if n != "kustomization.yaml" {
			name = n
			break
		}
	}
	target := filepath.Join(dir, "east", name)
	if err := os.Remove(target); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(target, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := Write(dir, out); err == nil || !strings.Contains(err.Error(), target+" (a directory)") {
		t.Errorf("Write over a directory: %v", err)
	}
	diffs, err := Diff(dir, out)
	if err != nil || !slices.Contains(diffs, target+" (a directory): not written by backbone render") {
		t.Errorf("diffs %q, %v", diffs, err)
	}
	if entries, _ := os.ReadDir(filepath.Join(dir, "east")); slices.ContainsFunc(entries, func(e os.DirEntry) bool { return strings.HasPrefix(e.Name(), ".") }) {
		t.Error("a temporary file was left behind")
	}
}

// TestRenderGoldenEgressNamespace: with a namespace, the EgressTargets
// (and only they) go there, into testdata/golden-namespace; a namespace
// that cannot exist is refused.
func TestRenderGoldenEgressNamespace(t *testing.T) {
	cfg, err := Load([]string{"testdata/seed.yaml", "testdata/platform.yaml"}, clusters)
	if err != nil {
		t.Fatal(err)
	}
	out, err := Render(cfg, clusters, RenderOptions{EgressNamespace: "egress"})
	if err != nil {
		t.Fatal(err)
	}
	golden := filepath.Join("testdata", "golden-namespace")
	if *update {
		if err := Write(golden, out); err != nil {
			t.Fatal(err)
		}
	}
	diffs, err := Diff(golden, out)
	if err != nil {
		t.Fatal(err)
	}
	if len(diffs) > 0 {
		t.Fatalf("rendered output differs from %s (go test ./internal/config -update):\n%s", golden, strings.Join(diffs, "\n"))
	}
	egress, ingress := 0, 0
	for c, files := range out {
		for name, b := range files {
			switch {
			case strings.HasPrefix(name, "egresstarget-"):
				egress++
				if !strings.Contains(string(b), "\n  namespace: egress\n") {
					t.Errorf("%s/%s is not in namespace egress:\n%s", c, name, b)
				}
			case strings.HasPrefix(name, "ingresstarget-"):
				ingress++
				if !strings.Contains(string(b), "\n  namespace: backbone-system\n") {
					t.Errorf("%s/%s left backbone-system:\n%s", c, name, b)
				}
			}
		}
	}
	if egress != 3 || ingress != 3 {
		t.Fatalf("rendered %d EgressTargets and %d IngressTargets, want 3 and 3", egress, ingress)
	}
	for _, bad := range []string{"Egress", "egress.system", "-egress", strings.Repeat("a", 64)} {
		if _, err := Render(cfg, clusters, RenderOptions{EgressNamespace: bad}); err == nil || !strings.Contains(err.Error(), "namespace") {
			t.Errorf("namespace %q: error %v, want one naming the namespace", bad, err)
		}
	}
}

// TestLoadNothingOnError: one broken file among good ones fails the whole
// load and names every problem.
func TestLoadNothingOnError(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(bad, []byte("ingress:\n  - service: x\n    namespace: y\n    cluster: mars\n    squad: s\n    port: 1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err := Load([]string{"testdata/seed.yaml", bad, filepath.Join(dir, "missing.yaml")}, clusters)
	if cfg != nil || err == nil {
		t.Fatalf("load = %v, %v", cfg, err)
	}
	if !strings.Contains(err.Error(), "missing.yaml:0: open") {
		t.Fatalf("error does not name the missing file: %v", err)
	}
}

func TestLoadClusters(t *testing.T) {
	dir := t.TempDir()
	for content, want := range map[string]string{
		"- east\n- west\n":                   "east,west",
		"clusters: [east, west, platform]\n": "east,west,platform",
	} {
		p := filepath.Join(dir, "c.yaml")
		_ = os.WriteFile(p, []byte(content), 0o644)
		got, err := LoadClusters(p)
		if err != nil || strings.Join(got, ",") != want {
			t.Fatalf("%q: %v %v", content, got, err)
		}
	}
	_ = os.WriteFile(filepath.Join(dir, "bad.yaml"), []byte("clusters: [East]\n"), 0o644)
	if _, err := LoadClusters(filepath.Join(dir, "bad.yaml")); err == nil || !strings.Contains(err.Error(), "bad.yaml") {
		t.Fatalf("bad clusters file: %v", err)
	}
}

// FuzzParse: no input panics, and what parses renders.
func FuzzParse(f *testing.F) {
	for _, p := range []string{"testdata/seed.yaml", "testdata/platform.yaml"} {
		b, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte("targets:\n  - hostName: a\n    dnsName: a.b\n    environment: east\n    squad: s\n    port: 0x10\n"))
	f.Add([]byte("ingress: [{service: a, namespace: b, cluster: west, squad: s, port: 1}]\n"))
	f.Add([]byte("targets: &a [*a]\n"))
	f.Add([]byte("%YAML 1.2\n---\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		file, err := Parse("fuzz.yaml", data)
		if err != nil {
			var errs Errors
			if !errors.As(err, &errs) || len(errs) == 0 {
				t.Fatalf("error is not Errors: %v", err)
			}
			for _, e := range errs {
				if e.Pos.File != "fuzz.yaml" || e.Pos.Line < 0 {
					t.Fatalf("error without position: %v", e)
				}
			}
			return
		}
		cfg, err := Check([]*File{file}, clusters)
		if err != nil {
			return
		}
		if _, err := Render(cfg, clusters, RenderOptions{}); err != nil {
			t.Fatalf("checked config does not render: %v", err)
		}
		// What checks, the cluster accepts: the names render hands it and
		// the path the probe requests.
		for _, tg := range cfg.Targets {
			if errs := validation.IsDNS1035Label(tg.MirrorName()); len(errs) > 0 {
				t.Fatalf("checked target %+v has mirror %q: %s", tg, tg.MirrorName(), errs[0])
			}
			if _, err := url.Parse("https://" + tg.DNSName + tg.ProbePath); err != nil {
				t.Fatalf("checked target %+v cannot be probed: %v", tg, err)
			}
		}
		for _, in := range cfg.Ingress {
			if errs := validation.IsValidLabelValue(in.Name()); len(errs) > 0 {
				t.Fatalf("checked ingress %+v has name %q: %s", in, in.Name(), errs[0])
			}
		}
	})
}
