package sandbox

import (
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
)

func TestNoProxySettings(t *testing.T) {
	sandbox := []string{"10.214.0.254", "10.214.0.0/24"}
	for name, tc := range map[string]struct {
		env       map[string]string
		wantUpper string
		wantLower string
	}{
		"without proxy settings both list only the sandbox's addresses": {
			env:       nil,
			wantUpper: "10.214.0.254,10.214.0.0/24", wantLower: "10.214.0.254,10.214.0.0/24",
		},
		"the user's NO_PROXY is kept and no_proxy starts from it": {
			env:       map[string]string{"NO_PROXY": "corp.example,.internal"},
			wantUpper: "corp.example,.internal,10.214.0.254,10.214.0.0/24", wantLower: "corp.example,.internal,10.214.0.254,10.214.0.0/24",
		},
		"the user's no_proxy is kept and NO_PROXY starts from it": {
			env:       map[string]string{"no_proxy": "corp.example"},
			wantUpper: "corp.example,10.214.0.254,10.214.0.0/24", wantLower: "corp.example,10.214.0.254,10.214.0.0/24",
		},
		"each variable keeps its own value": {
			env:       map[string]string{"NO_PROXY": "a.example", "no_proxy": "b.example"},
			wantUpper: "a.example,10.214.0.254,10.214.0.0/24", wantLower: "b.example,10.214.0.254,10.214.0.0/24",
		},
		"an address already listed is not listed twice": {
			env:       map[string]string{"NO_PROXY": "10.214.0.0/24, a.example"},
			wantUpper: "10.214.0.0/24,a.example,10.214.0.254", wantLower: "10.214.0.0/24,a.example,10.214.0.254",
		},
	} {
		t.Run(name, func(t *testing.T) {
			got := noProxySettings(func(k string) string { return tc.env[k] }, sandbox)
			if got["NO_PROXY"] != tc.wantUpper || got["no_proxy"] != tc.wantLower || len(got) != 2 {
				t.Errorf("got %q, want NO_PROXY=%q no_proxy=%q", got, tc.wantUpper, tc.wantLower)
			}
		})
	}
}

func TestTheSandboxsOwnCallsBypassTheUsersProxy(t *testing.T) {
	// Go never proxies loopback: the target is on the machine's own
	// address, as the sandbox's are.
	ip, err := firstNonLoopback()
	if err != nil {
		t.Skip(err)
	}
	proxied := 0
	proxy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		proxied++
		w.WriteHeader(http.StatusBadGateway)
	}))
	defer proxy.Close()
	l, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		t.Fatal(err)
	}
	target := &httptest.Server{Listener: l, Config: &http.Server{Handler: http.HandlerFunc(func(http.ResponseWriter, *http.Request) {})}}
	target.Start()
	defer target.Close()
	// Go reads these once per process: no other test of the package makes
	// an HTTP call before this one.
	t.Setenv("HTTP_PROXY", proxy.URL)
	t.Setenv("HTTPS_PROXY", proxy.URL)

	if err := getOK(t.Context(), target.URL+"/readyz"); err != nil {
		t.Errorf("a readiness check: %v", err)
	}
	if proxied != 0 {
		t.Errorf("%d calls went to the user's proxy", proxied)
	}
}
