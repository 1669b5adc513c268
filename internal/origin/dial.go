// Package origin originates connections from a gateway to egress targets:
// resources outside every cluster (an Azure App Service, a managed
// database) that a cluster reaches on behalf of the mesh. It dials only
// the configured DNS name, refuses addresses a gateway must never reach
// whatever DNS answers (loopback, link-local, cloud metadata, unspecified,
// multicast), originates TLS with SNI and certificate verification, and
// for HTTPS targets rewrites the Host header to the target's name, since
// App Service and most SaaS front doors route by Host.
package origin

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"syscall"
	"time"
)

// ErrForbiddenAddress is returned when a target resolves to an address a
// gateway must not dial.
var ErrForbiddenAddress = errors.New("forbidden address")

// metadataAddrs are cloud metadata endpoints outside the link-local range.
var metadataAddrs = []netip.Addr{
	netip.MustParseAddr("100.100.100.200"), // Alibaba Cloud
	netip.MustParseAddr("fd00:ec2::254"),   // AWS IMDS over IPv6
}

// Forbidden reports why addr may not be dialled, or "" when it may.
func Forbidden(addr netip.Addr) string {
	// Without its zone: netip's IsUnspecified and == compare zones, and
	// "::%eth0" is as much this host as "::" is.
	addr = addr.Unmap().WithZone("")
	switch {
	case !addr.IsValid():
		return "invalid address"
	case addr.IsLoopback():
		return "loopback address"
	case addr.IsLinkLocalUnicast(), addr.IsLinkLocalMulticast():
		return "link-local address (includes 169.254.169.254 metadata)"
	case addr.IsUnspecified():
		return "unspecified address"
	case addr.IsMulticast(), addr.IsInterfaceLocalMulticast():
		return "multicast address"
	}
	for _, m := range metadataAddrs {
		if addr == m {
			return "cloud metadata address"
		}
	}
	return ""
}

// Dialer dials egress targets, checking the address actually connected
// to (after DNS), so a rebinding answer cannot smuggle a forbidden one.
type Dialer struct {
	Timeout time.Duration
	// LookupNetIP resolves target names; nil means net.DefaultResolver's.
	LookupNetIP func(ctx context.Context, host string) ([]netip.Addr, error)
}

// DialContext connects to host:port over TCP: it resolves host, skips
// forbidden answers, and tries the others in order.
func (d *Dialer) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	switch network {
	case "tcp", "tcp4", "tcp6":
	default:
		return nil, fmt.Errorf("network %q: only TCP is originated", network)
	}
	timeout := d.Timeout
	if timeout == 0 {
		timeout = 10 * time.Second
	}
	candidates, errs, err := d.candidates(ctx, address)
	if err != nil {
		return nil, err
	}
	nd := &net.Dialer{
		Timeout: timeout,
		// Checked again on the socket itself: the address connected to is
		// the one that counts.
		ControlContext: func(_ context.Context, _, address string, _ syscall.RawConn) error {
			return checkConnect(address)
		},
	}
	for _, c := range candidates {
		conn, err := nd.DialContext(ctx, "tcp", c)
		if err == nil {
			return conn, nil
		}
		errs = append(errs, err)
	}
	if len(errs) == 0 {
		return nil, fmt.Errorf("%s: no addresses", address)
	}
	return nil, errors.Join(errs...)
}

// candidates resolves address (host:port) and returns the addresses a
// dial may try, in order, as "ip:port", and why each forbidden answer was
// skipped. An IP literal is taken as it is, without a lookup.
func (d *Dialer) candidates(ctx context.Context, address string) ([]string, []error, error) {
	host, port, err := net.SplitHostPort(address)
	if err != nil {
		return nil, nil, err
	}
	var addrs []netip.Addr
	if a, err := netip.ParseAddr(host); err == nil {
		addrs = []netip.Addr{a}
	} else {
		lookup := d.LookupNetIP
		if lookup == nil {
			lookup = func(ctx context.Context, host string) ([]netip.Addr, error) {
				return net.DefaultResolver.LookupNetIP(ctx, "ip", host)
			}
		}
		if addrs, err = lookup(ctx, host); err != nil {
			return nil, nil, err
		}
	}
	var out []string
	var refused []error
	for _, a := range addrs {
		if why := Forbidden(a); why != "" {
			refused = append(refused, fmt.Errorf("%w: %s resolves to %s, a %s", ErrForbiddenAddress, host, a, why))
			continue
		}
		out = append(out, net.JoinHostPort(a.Unmap().String(), port))
	}
	return out, refused, nil
}

// checkConnect is the check on the socket, given the address the kernel
// is about to connect to.
func checkConnect(address string) error {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return fmt.Errorf("%w: %s: %v", ErrForbiddenAddress, address, err)
	}
	if why := Forbidden(ap.Addr()); why != "" {
		return fmt.Errorf("%w: %s is a %s", ErrForbiddenAddress, ap.Addr(), why)
	}
	return nil
}

// StaticLookup resolves the names in pins to their addresses (like curl's
// --resolve) and every other name with DNS. The addresses are still
// checked at dial time. A nil or empty map means DNS only.
func StaticLookup(pins map[string][]netip.Addr) func(ctx context.Context, host string) ([]netip.Addr, error) {
	if len(pins) == 0 {
		return nil
	}
	return func(ctx context.Context, host string) ([]netip.Addr, error) {
		if addrs, ok := pins[pinKey(host)]; ok {
			return addrs, nil
		}
		return net.DefaultResolver.LookupNetIP(ctx, "ip", host)
	}
}

// pinKey is the form of a name pins are kept and looked up by.
func pinKey(name string) string { return strings.ToLower(strings.TrimSuffix(name, ".")) }

// ParseResolve parses "name=addr[,addr...]" pins. The name must be a DNS
// name and no address one the dialer refuses: a pin that could never be
// used is an error at start, not a failed dial later.
func ParseResolve(specs []string) (map[string][]netip.Addr, error) {
	out := map[string][]netip.Addr{}
	for _, s := range specs {
		name, list, ok := strings.Cut(s, "=")
		if !ok || name == "" || list == "" {
			return nil, fmt.Errorf("resolve %q: want NAME=ADDRESS[,ADDRESS...]", s)
		}
		key := pinKey(name)
		if !isDNSName(key) {
			return nil, fmt.Errorf("resolve %q: %q is not a DNS name", s, name)
		}
		for _, a := range strings.Split(list, ",") {
			addr, err := netip.ParseAddr(strings.TrimSpace(a))
			if err != nil {
				return nil, fmt.Errorf("resolve %q: %v", s, err)
			}
			if why := Forbidden(addr); why != "" {
				return nil, fmt.Errorf("resolve %q: %s is a %s, which egress never dials", s, addr, why)
			}
			out[key] = append(out[key], addr)
		}
	}
	return out, nil
}

// isDNSName: lower-case letters, digits and hyphens in dot-separated
// labels of 1 to 63 characters, at most 253 in all, not an IP address.
func isDNSName(s string) bool {
	if len(s) == 0 || len(s) > 253 {
		return false
	}
	if _, err := netip.ParseAddr(s); err == nil {
		return false
	}
	for _, label := range strings.Split(s, ".") {
		if len(label) == 0 || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
				return false
			}
		}
	}
	return true
}
