package gateway

import (
	"fmt"
	"strconv"
	"strings"
)

const clusterDomain = "svc.cluster.local"

// Authority is a parsed tunnel target:
// [<hostname>.]<service>.<namespace>.svc.cluster.local:<port>.
type Authority struct {
	Hostname  string // a pod hostname of a headless service, or ""
	Service   string
	Namespace string
	Port      int32
}

func (a Authority) String() string {
	host := a.Service + "." + a.Namespace + "." + clusterDomain
	if a.Hostname != "" {
		host = a.Hostname + "." + host
	}
	return host + ":" + strconv.Itoa(int(a.Port))
}

func isDNSLabel(s string) bool {
	if len(s) == 0 || len(s) > 63 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9':
		case c == '-' && i > 0 && i < len(s)-1:
		default:
			return false
		}
	}
	return true
}

// ParseAuthority parses a CONNECT :authority. It is strict: lower-case
// DNS labels only, a numeric port in range, nothing else; the value comes
// from a peer and names what it wants to reach.
func ParseAuthority(s string) (Authority, error) {
	if len(s) > 320 {
		return Authority{}, fmt.Errorf("authority too long")
	}
	host, portStr, ok := strings.Cut(s, ":")
	if !ok || strings.Contains(portStr, ":") {
		return Authority{}, fmt.Errorf("authority %q: want <service>.<namespace>.%s:<port>", s, clusterDomain)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil || port < 1 || port > 65535 || strconv.Itoa(port) != portStr {
		return Authority{}, fmt.Errorf("authority %q: bad port", s)
	}
	name, ok := strings.CutSuffix(host, "."+clusterDomain)
	if !ok {
		return Authority{}, fmt.Errorf("authority %q: not a cluster service name", s)
	}
	labels := strings.Split(name, ".")
	for _, l := range labels {
		if !isDNSLabel(l) {
			return Authority{}, fmt.Errorf("authority %q: %q is not a DNS label", s, l)
		}
	}
	a := Authority{Port: int32(port)}
	switch len(labels) {
	case 2:
		a.Service, a.Namespace = labels[0], labels[1]
	case 3:
		a.Hostname, a.Service, a.Namespace = labels[0], labels[1], labels[2]
	default:
		return Authority{}, fmt.Errorf("authority %q: want [<hostname>.]<service>.<namespace>.%s", s, clusterDomain)
	}
	return a, nil
}
