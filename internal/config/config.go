// Package config reads the files squads write to declare egress targets
// and ingress entries — the seed's format, alone or inside a shuttle.yaml —
// and checks them all together before anything is rendered.
//
// A file is untrusted input: every error names the file and line, and a
// conflict between two entries names both.
package config

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/url"
	"sort"
	"strconv"
	"strings"

	yaml "go.yaml.in/yaml/v3"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/backbone-mesh/backbone/api/v1alpha1"
)

// MaxFileSize bounds what one file may hold.
const MaxFileSize = 4 << 20

// Position is where an entry or field sits.
type Position struct {
	File string
	Line int
}

func (p Position) String() string { return fmt.Sprintf("%s:%d", p.File, p.Line) }

// Error is one problem at one place.
type Error struct {
	Pos Position
	Msg string
}

func (e *Error) Error() string { return e.Pos.String() + ": " + e.Msg }

// Errors is every problem found, in file and line order.
type Errors []*Error

func (es Errors) Error() string {
	lines := make([]string, len(es))
	for i, e := range es {
		lines[i] = e.Error()
	}
	return strings.Join(lines, "\n")
}

func (es Errors) sorted() Errors {
	sort.SliceStable(es, func(i, j int) bool {
		if es[i].Pos.File != es[j].Pos.File {
			return es[i].Pos.File < es[j].Pos.File
		}
		return es[i].Pos.Line < es[j].Pos.Line
	})
	return es
}

// Target is one egress target: a resource outside every cluster that the
// gateway of its environment reaches on the others' behalf.
type Target struct {
	Pos         Position
	HostName    string
	DNSName     string
	Environment string
	Squad       string
	Port        int32
	Protocol    v1alpha1.EgressProtocol
	CABundle    string
	ProbePath   string
}

// Ingress is one service exposed outside its cluster.
type Ingress struct {
	Pos        Position
	Service    string
	Namespace  string
	Cluster    string
	Squad      string
	Port       int32
	Host       string
	ExposeFrom string
}

// File is what one file declares.
type File struct {
	Path    string
	Targets []Target
	Ingress []Ingress
}

// Config is every file, checked together.
type Config struct {
	Targets []Target
	Ingress []Ingress
}

// Keys backbone reads at the top of a file; shuttle's own keys sit beside
// them and are ignored, as is anything else that is not a near miss of
// these.
var topLevelKeys = []string{"targets", "ingress"}

var targetKeys = map[string]bool{
	"hostName": true, "dnsName": true, "environment": true, "squad": true,
	"port": true, "protocol": true, "caBundle": true, "probePath": true,
}

var ingressKeys = map[string]bool{
	"service": true, "namespace": true, "cluster": true, "squad": true,
	"port": true, "host": true, "exposeFrom": true,
}

// Parse reads one file. The file's own errors (syntax, unknown keys, bad
// values) are returned together as Errors.
func Parse(path string, data []byte) (*File, error) {
	if len(data) > MaxFileSize {
		return nil, Errors{{Pos: Position{path, 1}, Msg: fmt.Sprintf("file is larger than %d bytes", MaxFileSize)}}
	}
	f := &File{Path: path}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return f, nil // an empty file declares nothing
		}
		return nil, Errors{syntaxError(path, err)}
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); err == nil {
		return nil, Errors{{Pos: Position{path, extra.Line}, Msg: "more than one YAML document; put every entry in one document"}}
	} else if !errors.Is(err, io.EOF) {
		return nil, Errors{syntaxError(path, err)}
	}
	p := &parser{path: path}
	p.file(&doc, f)
	if len(p.errs) > 0 {
		return nil, p.errs.sorted()
	}
	return f, nil
}

func syntaxError(path string, err error) *Error {
	line := 1
	msg := err.Error()
	// yaml.v3 reports "yaml: line N: message".
	if rest, ok := strings.CutPrefix(msg, "yaml: line "); ok {
		if n, after, ok := strings.Cut(rest, ": "); ok {
			if v, err := strconv.Atoi(n); err == nil {
				line, msg = v, after
			}
		}
	} else {
		msg = strings.TrimPrefix(msg, "yaml: ")
	}
	return &Error{Pos: Position{path, line}, Msg: "invalid YAML: " + msg}
}

type parser struct {
	path string
	errs Errors
}

func (p *parser) errorf(line int, format string, args ...any) {
	p.errs = append(p.errs, &Error{Pos: Position{p.path, line}, Msg: fmt.Sprintf(format, args...)})
}

func (p *parser) file(doc *yaml.Node, f *File) {
	root := doc
	if root.Kind == yaml.DocumentNode {
		if len(root.Content) == 0 {
			return
		}
		root = root.Content[0]
	}
	if root.Kind == yaml.ScalarNode && root.Tag == "!!null" {
		return
	}
	if root.Kind != yaml.MappingNode {
		p.errorf(root.Line, "the file must be a mapping with targets and/or ingress lists")
		return
	}
	seen := map[string]int{}
	for i := 0; i+1 < len(root.Content); i += 2 {
		k, v := root.Content[i], root.Content[i+1]
		if prev, dup := seen[k.Value]; dup {
			p.errorf(k.Line, "key %q repeated (first at line %d)", k.Value, prev)
			continue
		}
		seen[k.Value] = k.Line
		switch k.Value {
		case "targets":
			for _, item := range p.list(k, v) {
				if t, ok := p.target(item); ok {
					f.Targets = append(f.Targets, t)
				}
			}
		case "ingress":
			for _, item := range p.list(k, v) {
				if in, ok := p.ingress(item); ok {
					f.Ingress = append(f.Ingress, in)
				}
			}
		default:
			if near := nearMiss(k.Value, topLevelKeys); near != "" {
				p.errorf(k.Line, "unknown key %q; did you mean %q?", k.Value, near)
			}
		}
	}
}

func (p *parser) list(k, v *yaml.Node) []*yaml.Node {
	if v.Kind == yaml.ScalarNode && v.Tag == "!!null" {
		return nil
	}
	if v.Kind != yaml.SequenceNode {
		p.errorf(v.Line, "%s must be a list of entries", k.Value)
		return nil
	}
	return v.Content
}

// fields reads one entry's mapping, reporting unknown, repeated and
// non-scalar keys.
func (p *parser) fields(kind string, item *yaml.Node, known map[string]bool) (map[string]*yaml.Node, bool) {
	if item.Kind != yaml.MappingNode {
		p.errorf(item.Line, "%s entry must be a mapping", kind)
		return nil, false
	}
	out := map[string]*yaml.Node{}
	ok := true
	for i := 0; i+1 < len(item.Content); i += 2 {
		k, v := item.Content[i], item.Content[i+1]
		switch {
		case !known[k.Value]:
			msg := fmt.Sprintf("unknown key %q in %s entry", k.Value, kind)
			if near := nearMiss(k.Value, sortedKeys(known)); near != "" {
				msg += fmt.Sprintf("; did you mean %q?", near)
			}
			p.errorf(k.Line, "%s", msg)
			ok = false
		case out[k.Value] != nil:
			p.errorf(k.Line, "key %q repeated (first at line %d)", k.Value, out[k.Value].Line)
			ok = false
		case v.Kind != yaml.ScalarNode:
			p.errorf(v.Line, "%s must be a single value", k.Value)
			ok = false
		default:
			out[k.Value] = v
		}
	}
	return out, ok
}

func (p *parser) str(kind string, fs map[string]*yaml.Node, item *yaml.Node, key string, required bool) string {
	v := fs[key]
	if v == nil || v.Tag == "!!null" {
		if required {
			p.errorf(item.Line, "%s entry: %s is required", kind, key)
		}
		return ""
	}
	return v.Value
}

func (p *parser) port(kind string, fs map[string]*yaml.Node, item *yaml.Node, key string, required bool, def int32) int32 {
	v := fs[key]
	if v == nil || v.Tag == "!!null" {
		if required {
			p.errorf(item.Line, "%s entry: %s is required", kind, key)
		}
		return def
	}
	n, err := strconv.Atoi(v.Value)
	if err != nil || v.Tag != "!!int" {
		p.errorf(v.Line, "%s: %q is not a port number", key, v.Value)
		return def
	}
	if n < 1 || n > 65535 {
		p.errorf(v.Line, "%s: %d is out of range 1-65535", key, n)
		return def
	}
	return int32(n)
}

func (p *parser) dnsLabel(fs map[string]*yaml.Node, key, value string) {
	if value == "" {
		return
	}
	if errs := validation.IsDNS1123Label(value); len(errs) > 0 {
		p.errorf(fs[key].Line, "%s: %q is not a valid DNS label (RFC 1123): %s", key, value, errs[0])
	}
}

func (p *parser) dnsName(fs map[string]*yaml.Node, key, value string) {
	if value == "" {
		return
	}
	if errs := validation.IsDNS1123Subdomain(value); len(errs) > 0 {
		p.errorf(fs[key].Line, "%s: %q is not a valid DNS name (RFC 1123): %s", key, value, errs[0])
		return
	}
	if why := ipLiteralError(value); why != "" {
		p.errorf(fs[key].Line, "%s: %q %s", key, value, why)
		return
	}
	if !strings.Contains(value, ".") {
		p.errorf(fs[key].Line, "%s: %q is not a fully qualified DNS name", key, value)
	}
}

func (p *parser) squad(fs map[string]*yaml.Node, value string) {
	if value == "" {
		return
	}
	if errs := validation.IsValidLabelValue(value); len(errs) > 0 {
		p.errorf(fs["squad"].Line, "squad: %q cannot be a label value: %s", value, errs[0])
	}
}

func (p *parser) target(item *yaml.Node) (Target, bool) {
	const kind = "targets"
	fs, ok := p.fields(kind, item, targetKeys)
	if !ok {
		return Target{}, false
	}
	before := len(p.errs)
	t := Target{
		Pos:         Position{p.path, item.Line},
		HostName:    p.str(kind, fs, item, "hostName", true),
		DNSName:     p.str(kind, fs, item, "dnsName", true),
		Environment: p.str(kind, fs, item, "environment", true),
		Squad:       p.str(kind, fs, item, "squad", true),
		Port:        p.port(kind, fs, item, "port", false, 443),
		Protocol:    v1alpha1.EgressProtocol(p.str(kind, fs, item, "protocol", false)),
		CABundle:    p.str(kind, fs, item, "caBundle", false),
		ProbePath:   p.str(kind, fs, item, "probePath", false),
	}
	p.serviceName(fs, "hostName", t.HostName)
	p.dnsName(fs, "dnsName", t.DNSName)
	p.clusterName(fs, "environment", t.Environment)
	p.squad(fs, t.Squad)
	// Only once hostName and environment are each valid: the mirror's
	// name is their sum, and its error would repeat theirs.
	if len(validation.IsDNS1035Label(t.HostName)) == 0 && len(clusterNameErrors(t.Environment)) == 0 {
		if errs := validation.IsDNS1035Label(t.MirrorName()); len(errs) > 0 {
			p.errorf(fs["hostName"].Line, "hostName: target %q in environment %s is mirrored as %q in linked clusters, which is not a valid Service name: %s",
				t.HostName, t.Environment, t.MirrorName(), errs[0])
		}
	}
	switch t.Protocol {
	case "":
		t.Protocol = v1alpha1.EgressProtocolHTTPS
	case v1alpha1.EgressProtocolHTTPS, v1alpha1.EgressProtocolTLS, v1alpha1.EgressProtocolTCP:
	default:
		p.errorf(fs["protocol"].Line, "protocol: %q is not one of https, tls, tcp", t.Protocol)
	}
	if t.ProbePath == "" {
		t.ProbePath = "/"
	} else {
		p.probePath(fs, t.ProbePath)
	}
	if t.CABundle != "" {
		if err := checkCABundle(t.CABundle); err != nil {
			p.errorf(fs["caBundle"].Line, "caBundle: %v", err)
		}
	}
	return t, len(p.errs) == before
}

func (p *parser) ingress(item *yaml.Node) (Ingress, bool) {
	const kind = "ingress"
	fs, ok := p.fields(kind, item, ingressKeys)
	if !ok {
		return Ingress{}, false
	}
	before := len(p.errs)
	in := Ingress{
		Pos:        Position{p.path, item.Line},
		Service:    p.str(kind, fs, item, "service", true),
		Namespace:  p.str(kind, fs, item, "namespace", true),
		Cluster:    p.str(kind, fs, item, "cluster", true),
		Squad:      p.str(kind, fs, item, "squad", true),
		Port:       p.port(kind, fs, item, "port", true, 0),
		Host:       p.str(kind, fs, item, "host", false),
		ExposeFrom: p.str(kind, fs, item, "exposeFrom", false),
	}
	p.serviceName(fs, "service", in.Service)
	p.dnsLabel(fs, "namespace", in.Namespace)
	p.clusterName(fs, "cluster", in.Cluster)
	p.clusterName(fs, "exposeFrom", in.ExposeFrom)
	p.dnsName(fs, "host", in.Host)
	p.squad(fs, in.Squad)
	// The name labels what the IngressTarget becomes
	// (backbone.dev/ingress-target), so it must be a label value.
	if len(validation.IsDNS1035Label(in.Service)) == 0 && len(validation.IsDNS1123Label(in.Namespace)) == 0 && len(clusterNameErrors(in.Cluster)) == 0 {
		if errs := validation.IsValidLabelValue(in.Name()); len(errs) > 0 {
			p.errorf(item.Line, "ingress for %s/%s in %s: service, namespace and cluster make the IngressTarget name %q, which cannot be a label value: %s",
				in.Namespace, in.Service, in.Cluster, in.Name(), errs[0])
		}
	}
	return in, len(p.errs) == before
}

// probePath reports a path the probe could not request as written: it
// requests https://<dnsName><probePath>, so a bad escape fails every
// probe and a fragment is silently dropped.
func (p *parser) probePath(fs map[string]*yaml.Node, path string) {
	line := fs["probePath"].Line
	if !strings.HasPrefix(path, "/") || strings.ContainsAny(path, " \t\r\n") {
		p.errorf(line, "probePath: %q must be a path starting with /", path)
		return
	}
	if _, err := url.ParseRequestURI(path); err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		p.errorf(line, "probePath: %q is not a valid request path: %v", path, err)
		return
	}
	if strings.Contains(path, "#") {
		p.errorf(line, "probePath: %q holds a fragment (#), which is never sent", path)
	}
}

func checkCABundle(s string) error {
	rest := []byte(s)
	n := 0
	for {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			return fmt.Errorf("holds a %q PEM block; only CERTIFICATE blocks belong in a CA bundle", b.Type)
		}
		if _, err := x509.ParseCertificate(b.Bytes); err != nil {
			return fmt.Errorf("certificate %d: %v", n+1, err)
		}
		n++
	}
	if n == 0 {
		return errors.New("holds no PEM certificate")
	}
	if len(bytes.TrimSpace(rest)) > 0 {
		return errors.New("has text after its last certificate")
	}
	return nil
}

func sortedKeys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// nearMiss returns the candidate within edit distance 2 of s (ignoring
// case), if any.
func nearMiss(s string, candidates []string) string {
	for _, c := range candidates {
		if d := distance(strings.ToLower(s), strings.ToLower(c)); d > 0 && d <= 2 || d == 0 && s != c {
			return c
		}
	}
	return ""
}

func distance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
