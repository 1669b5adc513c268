package config

import (
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"

	yaml "go.yaml.in/yaml/v3"
)

// Load reads and checks every file against the known clusters. Nothing is
// returned unless every file is free of errors.
func Load(paths []string, clusters []string) (*Config, error) {
	var files []*File
	var errs Errors
	for _, path := range paths {
		data, err := os.ReadFile(path)
		if err != nil {
			errs = append(errs, &Error{Pos: Position{path, 0}, Msg: err.Error()})
			continue
		}
		f, err := Parse(path, data)
		var fe Errors
		switch {
		case errors.As(err, &fe):
			errs = append(errs, fe...)
		case err != nil:
			errs = append(errs, &Error{Pos: Position{path, 0}, Msg: err.Error()})
		default:
			files = append(files, f)
		}
	}
	if len(errs) > 0 {
		return nil, errs
	}
	return Check(files, clusters)
}

// Check validates the files together: clusters exist, and no two entries
// claim the same target name in an environment, the same Service in an
// egress namespace, or the same ingress host.
func Check(files []*File, clusters []string) (*Config, error) {
	known := map[string]bool{}
	for _, c := range clusters {
		known[c] = true
	}
	list := strings.Join(clusters, ", ")
	var errs Errors
	unknown := func(pos Position, field, name string) {
		errs = append(errs, &Error{Pos: pos, Msg: fmt.Sprintf("%s: unknown cluster %q (known clusters: %s)", field, name, list)})
	}
	cfg := &Config{}
	targets := map[string]Target{} // environment/hostName
	hosts := map[string]Ingress{}  // host, or the default host's parts
	routes := map[string]Ingress{} // served-from cluster/IngressTarget name
	for _, f := range files {
		for _, t := range f.Targets {
			if !known[t.Environment] {
				unknown(t.Pos, "environment", t.Environment)
			}
			key := t.Environment + "/" + t.HostName
			if prev, dup := targets[key]; dup {
				errs = append(errs, &Error{Pos: t.Pos, Msg: fmt.Sprintf("target %q in environment %s (squad %s) is also declared at %s (squad %s)",
					t.HostName, t.Environment, t.Squad, prev.Pos, prev.Squad)})
				continue
			}
			targets[key] = t
			cfg.Targets = append(cfg.Targets, t)
		}
		for _, in := range f.Ingress {
			if !known[in.Cluster] {
				unknown(in.Pos, "cluster", in.Cluster)
			}
			if in.ExposeFrom != "" && !known[in.ExposeFrom] {
				unknown(in.Pos, "exposeFrom", in.ExposeFrom)
			}
			key, what := hostKey(in)
			if prev, dup := hosts[key]; dup {
				errs = append(errs, &Error{Pos: in.Pos, Msg: fmt.Sprintf("ingress for %s/%s in %s (squad %s) claims %s, already claimed at %s by %s/%s in %s (squad %s)",
					in.Namespace, in.Service, in.Cluster, in.Squad, what, prev.Pos, prev.Namespace, prev.Service, prev.Cluster, prev.Squad)})
				continue
			}
			route := in.ServedFrom() + "/" + in.Name()
			if prev, dup := routes[route]; dup {
				errs = append(errs, &Error{Pos: in.Pos, Msg: fmt.Sprintf("ingress for %s/%s in %s (squad %s) is exposed from %s twice; also at %s (squad %s)",
					in.Namespace, in.Service, in.Cluster, in.Squad, in.ServedFrom(), prev.Pos, prev.Squad)})
				continue
			}
			routes[route] = in
			hosts[key] = in
			cfg.Ingress = append(cfg.Ingress, in)
		}
	}
	errs = append(errs, serviceClashes(cfg.Targets, clusters)...)
	if len(errs) > 0 {
		return nil, errs.sorted()
	}
	sort.Slice(cfg.Targets, func(i, j int) bool {
		a, b := cfg.Targets[i], cfg.Targets[j]
		return a.Environment+"/"+a.HostName < b.Environment+"/"+b.HostName
	})
	sort.Slice(cfg.Ingress, func(i, j int) bool { return cfg.Ingress[i].Name() < cfg.Ingress[j].Name() })
	return cfg, nil
}

// hostKey is what an ingress entry claims: its host, or the default host
// <service>.<cluster>.<domain> the controller gives it.
func hostKey(in Ingress) (key, what string) {
	if in.Host != "" {
		return "host:" + strings.ToLower(in.Host), fmt.Sprintf("host %q", in.Host)
	}
	return "default:" + in.Service + "." + in.Cluster, fmt.Sprintf("the default host %s.%s.<domain>", in.Service, in.Cluster)
}

// Name is the IngressTarget's name: unique per (cluster, namespace, service).
func (in Ingress) Name() string {
	return in.Service + "-" + in.Namespace + "-" + in.Cluster
}

// ServedFrom is the cluster whose controller owns the entry's route.
func (in Ingress) ServedFrom() string {
	if in.ExposeFrom != "" {
		return in.ExposeFrom
	}
	return in.Cluster
}

// ParseClusters reads a comma-separated list of cluster names.
func ParseClusters(s string) ([]string, error) {
	var out []string
	seen := map[string]bool{}
	for _, c := range strings.Split(s, ",") {
		c = strings.TrimSpace(c)
		if c == "" {
			continue
		}
		if errs := clusterNameErrors(c); len(errs) > 0 {
			return nil, fmt.Errorf("cluster name %q: %s", c, errs[0])
		}
		if !seen[c] {
			seen[c] = true
			out = append(out, c)
		}
	}
	return out, nil
}

// LoadClusters reads a clusters file: a YAML list of names, or a mapping
// with a clusters list (which may carry more keys, ignored). Like a
// squad's file, an error names the line, and the column where the YAML
// parser gives one.
func LoadClusters(path string) ([]string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, syntaxError(path, err)
	}
	at := func(n *yaml.Node, format string, args ...any) error {
		return fmt.Errorf("%s:%d:%d: %s", path, n.Line, n.Column, fmt.Sprintf(format, args...))
	}
	root := &doc
	if root.Kind == yaml.DocumentNode && len(root.Content) > 0 {
		root = root.Content[0]
	}
	list := root
	if root.Kind == yaml.MappingNode {
		list = nil
		for i := 0; i+1 < len(root.Content); i += 2 {
			if root.Content[i].Value == "clusters" {
				list = root.Content[i+1]
			}
		}
		if list == nil {
			return nil, at(root, "no clusters key (a YAML list of names, or clusters: [...])")
		}
		if list.Kind != yaml.SequenceNode {
			return nil, at(list, "clusters must be a list of names")
		}
	}
	if list.Kind != yaml.SequenceNode || len(list.Content) == 0 {
		return nil, fmt.Errorf("%s: no clusters listed (a YAML list of names, or clusters: [...])", path)
	}
	var out []string
	seen := map[string]bool{}
	for _, n := range list.Content {
		if n.Kind != yaml.ScalarNode || n.Tag == "!!null" {
			return nil, at(n, "clusters entry must be a name")
		}
		if errs := clusterNameErrors(n.Value); len(errs) > 0 {
			return nil, at(n, "cluster name %q: %s", n.Value, errs[0])
		}
		if !seen[n.Value] {
			seen[n.Value] = true
			out = append(out, n.Value)
		}
	}
	return out, nil
}
