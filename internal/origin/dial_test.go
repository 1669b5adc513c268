package origin

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"strings"
	"testing"
)

// forbiddenByNetIP is a second opinion on Forbidden, from package net's
// older IP type, which parses and classifies addresses with its own code.
func forbiddenByNetIP(s string) bool {
	s, _, _ = strings.Cut(s, "%") // net.ParseIP takes no zone
	ip := net.ParseIP(s)
	if ip == nil {
		return true // not an address: never dialled
	}
	return ip.IsLoopback() || ip.IsLinkLocalUnicast() || ip.IsLinkLocalMulticast() || ip.IsUnspecified() ||
		ip.IsMulticast() || ip.IsInterfaceLocalMulticast() ||
		ip.Equal(net.ParseIP("100.100.100.200")) || ip.Equal(net.ParseIP("fd00:ec2::254"))
}

// answersOf turns fuzzer bytes into DNS answers: each address takes a tag
// byte (odd: 4 bytes of IPv4, even: 16 bytes of IPv6, which covers
// IPv4-mapped forms; bit 1: with a zone) and its bytes.
func answersOf(b []byte) []netip.Addr {
	var out []netip.Addr
	for len(b) > 0 {
		tag := b[0]
		b = b[1:]
		n := 16
		if tag&1 == 1 {
			n = 4
		}
		if len(b) < n {
			break
		}
		var a netip.Addr
		if n == 4 {
			a = netip.AddrFrom4([4]byte(b[:4]))
		} else {
			a = netip.AddrFrom16([16]byte(b[:16]))
			if tag&2 == 2 {
				a = a.WithZone("eth0")
			}
		}
		b = b[n:]
		out = append(out, a)
	}
	return out
}

// FuzzEgressAddress checks what stands between an egress target's name and
// the socket: the address a dial may try (from an IP literal or from DNS
// answers the fuzzer makes up), the check on the socket, and the
// --egress-resolve pins.
//
//   - No address that is loopback, link-local, unspecified, multicast or a
//     metadata address is ever a candidate, in any spelling (IPv4-mapped,
//     zones), by Forbidden's verdict and by package net's.
//   - Every candidate passes the socket check, which is as strict as the
//     pre-check, and carries the port asked for.
//   - An IP literal is never looked up in DNS.
//   - The socket check never lets a forbidden address through.
//   - A pinned name is found again by its own spelling, in upper case
//     and with a trailing dot, and pins no forbidden address.
func FuzzEgressAddress(f *testing.F) {
	v4 := func(a ...byte) []byte { return append([]byte{1}, a...) }
	v6 := func(s string) []byte { b := netip.MustParseAddr(s).As16(); return append([]byte{0}, b[:]...) }
	f.Add("credit.example.com:443", v4(20, 50, 2, 1), "credit.example.com=20.50.2.1")
	f.Add("credit.example.com:443", append(v4(127, 0, 0, 1), v4(10, 1, 2, 3)...), "")
	f.Add("rebind.example.com:443", append(v6("::ffff:169.254.169.254"), v6("fd00:ec2::254")...), "")
	f.Add("[fe80::1%eth0]:443", []byte(nil), "a.example=fe80::1")
	f.Add("[::ffff:127.0.0.1]:80", []byte(nil), "Resource-A.AzureWebsites.NET.=20.1.2.3")
	f.Add("169.254.169.254:80", []byte(nil), "x..=1.2.3.4")
	f.Add("100.100.100.200:80", []byte(nil), "127.0.0.1=20.1.2.3")
	f.Add("0.0.0.0:443", []byte(nil), "x=0.0.0.0")
	f.Add("[ff02::1]:443", append([]byte{2}, make([]byte, 16)...), "x=::1,20.1.2.3")
	f.Add("credit.example.com.:https", v4(224, 0, 0, 1), "credit\x00.example=20.1.2.3")
	f.Fuzz(func(t *testing.T, address string, answers []byte, resolve string) {
		looked := false
		d := &Dialer{LookupNetIP: func(context.Context, string) ([]netip.Addr, error) {
			looked = true
			return answersOf(answers), nil
		}}
		candidates, refused, err := d.candidates(context.Background(), address)
		if err == nil {
			host, port, _ := net.SplitHostPort(address)
			if _, perr := netip.ParseAddr(host); perr == nil && looked {
				t.Errorf("%q: an IP literal was looked up in DNS", address)
			}
			for _, c := range candidates {
				h, p, err := net.SplitHostPort(c)
				if err != nil || p != port {
					t.Fatalf("%q: candidate %q does not carry port %q (%v)", address, c, port, err)
				}
				if forbiddenByNetIP(h) {
					t.Fatalf("%q with answers %v: candidate %s is a forbidden address", address, answersOf(answers), c)
				}
				a, err := netip.ParseAddr(h)
				if err != nil || Forbidden(a) != "" {
					t.Fatalf("%q: candidate %s: %v %q", address, c, err, Forbidden(a))
				}
				if err := checkConnect(net.JoinHostPort(h, "443")); err != nil {
					t.Fatalf("%q: candidate %s passes the pre-check but not the socket check: %v", address, c, err)
				}
			}
			for _, err := range refused {
				if !errors.Is(err, ErrForbiddenAddress) {
					t.Fatalf("%q: a skipped answer's error %v is not ErrForbiddenAddress", address, err)
				}
			}
		}
		if checkConnect(address) == nil {
			host, _, _ := net.SplitHostPort(address)
			if forbiddenByNetIP(host) {
				t.Fatalf("the socket check lets %q through", address)
			}
		}

		pins, err := ParseResolve([]string{resolve})
		if err != nil {
			return
		}
		for name, addrs := range pins {
			for _, spelling := range []string{name, strings.ToUpper(name), name + "."} {
				if got, ok := pins[pinKey(spelling)]; !ok || len(got) != len(addrs) {
					t.Fatalf("%q: pinned name %q is not found as %q", resolve, name, spelling)
				}
			}
			for _, a := range addrs {
				if forbiddenByNetIP(a.String()) {
					t.Fatalf("%q: pins the forbidden address %s", resolve, a)
				}
			}
		}
	})
}

func TestParseResolve(t *testing.T) {
	tests := map[string]struct {
		spec    string
		wantErr string
		want    map[string]string
	}{
		"a name is kept lower-case without its trailing dot": {spec: "Resource-A.AzureWebsites.NET.=20.1.2.3,20.1.2.4",
			want: map[string]string{"resource-a.azurewebsites.net": "20.1.2.3 20.1.2.4"}},
		"an empty label is refused":                {spec: "a..example=20.1.2.3", wantErr: "not a DNS name"},
		"two trailing dots are refused":            {spec: "a.example..=20.1.2.3", wantErr: "not a DNS name"},
		"an IP literal as the name is refused":     {spec: "10.1.2.3=20.1.2.3", wantErr: "not a DNS name"},
		"a NUL in the name is refused":             {spec: "a\x00.example=20.1.2.3", wantErr: "not a DNS name"},
		"a non-ASCII look-alike name is refused":   {spec: "exаmple.com=20.1.2.3", wantErr: "not a DNS name"},
		"a loopback pin is refused":                {spec: "a.example=127.0.0.1", wantErr: "loopback"},
		"the metadata address is refused":          {spec: "a.example=20.1.2.3,169.254.169.254", wantErr: "link-local"},
		"an IPv4-mapped loopback pin is refused":   {spec: "a.example=::ffff:127.0.0.1", wantErr: "loopback"},
		"a missing address is refused":             {spec: "a.example=", wantErr: "want NAME=ADDRESS"},
		"an address with a port is refused":        {spec: "a.example=20.1.2.3:443", wantErr: "resolve"},
		"a private address, as a private zone has": {spec: "db.internal=10.1.2.3", want: map[string]string{"db.internal": "10.1.2.3"}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			pins, err := ParseResolve([]string{tc.spec})
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("ParseResolve(%q) = %v, %v; want an error with %q", tc.spec, pins, err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got := map[string]string{}
			for k, addrs := range pins {
				var s []string
				for _, a := range addrs {
					s = append(s, a.String())
				}
				got[k] = strings.Join(s, " ")
			}
			if len(got) != len(tc.want) {
				t.Fatalf("pins %v, want %v", got, tc.want)
			}
			for k, v := range tc.want {
				if got[k] != v {
					t.Errorf("pins %v, want %v", got, tc.want)
				}
			}
		})
	}
}
