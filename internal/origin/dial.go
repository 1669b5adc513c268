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
	addr = addr.Unmap()
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
	timeout := d.Timeout
	if timeout == 0 {
		timeout = 10 * time.Second
	}
	host, port, err := net.SplitHostPort(address)
	if err != nil {
		return nil, err
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
			return nil, err
		}
	}
	nd := &net.Dialer{
		Timeout: timeout,
		// Checked again on the socket itself: the address connected to is
		// the one that counts.
		ControlContext: func(_ context.Context, _, address string, _ syscall.RawConn) error {
			ap, err := netip.ParseAddrPort(address)
			if err != nil {
				return fmt.Errorf("%w: %s: %v", ErrForbiddenAddress, address, err)
			}
			if why := Forbidden(ap.Addr()); why != "" {
				return fmt.Errorf("%w: %s is a %s", ErrForbiddenAddress, ap.Addr(), why)
			}
			return nil
		},
	}
	switch network {
	case "tcp", "tcp4", "tcp6":
	default:
		return nil, fmt.Errorf("network %q: only TCP is originated", network)
	}
	var errs []error
	for _, a := range addrs {
		if why := Forbidden(a); why != "" {
			errs = append(errs, fmt.Errorf("%w: %s resolves to %s, a %s", ErrForbiddenAddress, host, a, why))
			continue
		}
		c, err := nd.DialContext(ctx, "tcp", net.JoinHostPort(a.Unmap().String(), port))
		if err == nil {
			return c, nil
		}
		errs = append(errs, err)
	}
	if len(errs) == 0 {
		return nil, fmt.Errorf("%s: no addresses", host)
	}
	return nil, errors.Join(errs...)
}

// StaticLookup resolves the names in pins to their addresses (like curl's
// --resolve) and every other name with DNS. The addresses are still
// checked at dial time. A nil or empty map means DNS only.
func StaticLookup(pins map[string][]netip.Addr) func(ctx context.Context, host string) ([]netip.Addr, error) {
	if len(pins) == 0 {
		return nil
	}
	return func(ctx context.Context, host string) ([]netip.Addr, error) {
		if addrs, ok := pins[strings.ToLower(strings.TrimSuffix(host, "."))]; ok {
			return addrs, nil
		}
		return net.DefaultResolver.LookupNetIP(ctx, "ip", host)
	}
}

// ParseResolve parses "name=addr[,addr...]" pins.
func ParseResolve(specs []string) (map[string][]netip.Addr, error) {
	out := map[string][]netip.Addr{}
	for _, s := range specs {
		name, list, ok := strings.Cut(s, "=")
		if !ok || name == "" || list == "" {
			return nil, fmt.Errorf("resolve %q: want NAME=ADDRESS[,ADDRESS...]", s)
		}
		for _, a := range strings.Split(list, ",") {
			addr, err := netip.ParseAddr(strings.TrimSpace(a))
			if err != nil {
				return nil, fmt.Errorf("resolve %q: %v", s, err)
			}
			key := strings.ToLower(strings.TrimSuffix(name, "."))
			out[key] = append(out[key], addr)
		}
	}
	return out, nil
}
