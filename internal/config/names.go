package config

import (
	"fmt"
	"net/netip"
	"strings"

	yaml "go.yaml.in/yaml/v3"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/backbone-mesh/backbone/internal/mirror"
)

// maxClusterName is the CRDs' bound on a cluster's name (environment,
// cluster, exposeFrom, a Link's targetClusterName): mirrors carry it in
// their names, <service>-<cluster>, so it must leave the service room.
// TestClusterNamesAreBoundByTheCRDs holds it to api/v1alpha1's markers.
const maxClusterName = 40

// clusterNameErrors says why name cannot be a cluster's, if it cannot.
func clusterNameErrors(name string) []string {
	if len(name) > maxClusterName {
		return []string{validation.MaxLenError(maxClusterName)}
	}
	return validation.IsDNS1123Label(name)
}

// ipLiteralError says why name, valid as an RFC 1123 subdomain, still is
// an address rather than a name. Like origin's isDNSName (which the
// --egress-resolve pins go through), it refuses what netip parses, and
// also a numeric last label, which inet_aton-style resolvers read as an
// address ("127.1", "0x7f.1"): no top-level domain is numeric.
func ipLiteralError(name string) string {
	if _, err := netip.ParseAddr(name); err == nil {
		return "is an IP address, not a DNS name"
	}
	last := name[strings.LastIndexByte(name, '.')+1:]
	if strings.Trim(last, "0123456789") == "" {
		return "ends in a numeric label, which resolvers read as an IP address"
	}
	return ""
}

// serviceName reports a value that cannot name a Service.
func (p *parser) serviceName(fs map[string]*yaml.Node, key, value string) {
	if value == "" {
		return
	}
	if errs := validation.IsDNS1035Label(value); len(errs) > 0 {
		p.errorf(fs[key].Line, "%s: %q is not a valid Service name (RFC 1035 label): %s", key, value, errs[0])
	}
}

// clusterName reports a value that cannot name a cluster.
func (p *parser) clusterName(fs map[string]*yaml.Node, key, value string) {
	if value == "" {
		return
	}
	if errs := clusterNameErrors(value); len(errs) > 0 {
		p.errorf(fs[key].Line, "%s: %q is not a valid cluster name: %s", key, value, errs[0])
	}
}

// MirrorName is the Service that linked clusters make of the target.
func (t Target) MirrorName() string { return mirror.MirrorName(t.HostName, t.Environment) }

// serviceClashes finds two targets that would be one Service. A cluster's
// egress namespace holds the Service <hostName> of each target of its
// environment and, once it links the other environments, the mirror
// <hostName>-<environment> of each of their targets; two of these with
// one name would be one Service the controller and the mirror fight over.
func serviceClashes(targets []Target, clusters []string) Errors {
	type claim struct {
		t      Target
		mirror bool
	}
	describe := func(c claim) string {
		role := "Service"
		if c.mirror {
			role = "mirror"
		}
		return fmt.Sprintf("the %s of target %q in environment %s (squad %s)", role, c.t.HostName, c.t.Environment, c.t.Squad)
	}
	var errs Errors
	reported := map[[2]Position]bool{}
	for _, cluster := range clusters {
		claims := map[string]claim{}
		for _, t := range targets {
			c, name := claim{t: t}, t.HostName
			if t.Environment != cluster {
				c.mirror, name = true, t.MirrorName()
			}
			prev, dup := claims[name]
			if !dup {
				claims[name] = c
				continue
			}
			// Two clashing mirrors meet in every third cluster: one error
			// is enough.
			if pair := [2]Position{prev.t.Pos, t.Pos}; !reported[pair] {
				reported[pair] = true
				errs = append(errs, &Error{Pos: t.Pos, Msg: fmt.Sprintf("Service %s in the egress namespace of %s would be both %s and %s at %s",
					name, cluster, describe(c), describe(prev), prev.t.Pos)})
			}
		}
	}
	return errs
}
