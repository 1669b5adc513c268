package sandbox

import (
	"net/http"
	"net/url"
	"slices"
	"strings"
)

// The sandbox's addresses are on this machine: a proxy the user set for
// the outside (HTTPS_PROXY, HTTP_PROXY) must not get its readiness checks
// and API traffic.

// direct is a proxy function that chooses no proxy. A nil Proxy would not
// do in a rest.Config: client-go reads nil as "from the environment".
func direct(*http.Request) (*url.URL, error) { return nil, nil }

// directClient makes the sandbox's own HTTP calls.
var directClient = func() *http.Client {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.Proxy = nil
	return &http.Client{Transport: t}
}()

// bypassProxy adds addrs to NO_PROXY and no_proxy, in the supervisor's
// environment, which every process it starts inherits.
func bypassProxy(getenv func(string) string, setenv func(string, string) error, addrs []string) error {
	for k, v := range noProxySettings(getenv, addrs) {
		if err := setenv(k, v); err != nil {
			return err
		}
	}
	return nil
}

// noProxySettings appends addrs to the values of NO_PROXY and no_proxy.
// A variable the user did not set starts from the other one's value: Go
// reads NO_PROXY alone when it is set, curl no_proxy, so neither may lose
// what the user listed in the other.
func noProxySettings(getenv func(string) string, addrs []string) map[string]string {
	upper, lower := getenv("NO_PROXY"), getenv("no_proxy")
	if upper == "" {
		upper = lower
	}
	if lower == "" {
		lower = upper
	}
	return map[string]string{"NO_PROXY": appendEntries(upper, addrs), "no_proxy": appendEntries(lower, addrs)}
}

func appendEntries(list string, entries []string) string {
	var have []string
	for e := range strings.SplitSeq(list, ",") {
		if e = strings.TrimSpace(e); e != "" {
			have = append(have, e)
		}
	}
	for _, e := range entries {
		if !slices.Contains(have, e) {
			have = append(have, e)
		}
	}
	return strings.Join(have, ",")
}
