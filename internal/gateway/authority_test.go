package gateway

import "testing"

func TestParseAuthority(t *testing.T) {
	tests := map[string]struct {
		in   string
		want Authority
		ok   bool
	}{
		"a service authority parses":            {"hello.demo.svc.cluster.local:8080", Authority{"", "hello", "demo", 8080}, true},
		"a pod hostname of a headless service":  {"db-0.db.data.svc.cluster.local:5432", Authority{"db-0", "db", "data", 5432}, true},
		"no port is refused":                    {"hello.demo.svc.cluster.local", Authority{}, false},
		"port zero is refused":                  {"hello.demo.svc.cluster.local:0", Authority{}, false},
		"a port above 65535 is refused":         {"hello.demo.svc.cluster.local:65536", Authority{}, false},
		"a port with a leading zero is refused": {"hello.demo.svc.cluster.local:080", Authority{}, false},
		"an external name is refused":           {"example.com:443", Authority{}, false},
		"upper case is refused":                 {"Hello.demo.svc.cluster.local:80", Authority{}, false},
		"an IPv6 literal is refused":            {"[::1]:80", Authority{}, false},
		"a bare IP is refused":                  {"10.0.0.1:80", Authority{}, false},
		"too many labels are refused":           {"a.b.c.d.svc.cluster.local:80", Authority{}, false},
		"an empty label is refused":             {".demo.svc.cluster.local:80", Authority{}, false},
		"a label ending in a dash is refused":   {"hello-.demo.svc.cluster.local:80", Authority{}, false},
		"userinfo is refused":                   {"x@hello.demo.svc.cluster.local:80", Authority{}, false},
		"a trailing dot is refused":             {"hello.demo.svc.cluster.local.:80", Authority{}, false},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got, err := ParseAuthority(tc.in)
			if (err == nil) != tc.ok {
				t.Fatalf("ParseAuthority(%q) error = %v, want ok=%v", tc.in, err, tc.ok)
			}
			if tc.ok && (got != tc.want || got.String() != tc.in) {
				t.Errorf("got %+v (%s), want %+v", got, got, tc.want)
			}
		})
	}
}

// FuzzParseAuthority: authorities come from peers.
func FuzzParseAuthority(f *testing.F) {
	for _, s := range []string{"hello.demo.svc.cluster.local:8080", "db-0.db.data.svc.cluster.local:5432", "x:1", "a.b.svc.cluster.local:99999", "\x00.b.svc.cluster.local:1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		a, err := ParseAuthority(s)
		if err != nil {
			return
		}
		if a.String() != s {
			t.Fatalf("%q parsed to %+v which prints as %q", s, a, a.String())
		}
	})
}
