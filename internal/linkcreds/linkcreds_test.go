package linkcreds

import (
	"errors"
	"strings"
	"testing"
)

const good = `apiVersion: v1
kind: Config
clusters:
- name: east
  cluster:
    server: https://10.0.0.1:6443
    certificate-authority-data: Y2E=
users:
- name: reader
  user:
    token: abc.def.ghi
contexts:
- name: east
  context: {cluster: east, user: reader}
current-context: east
`

func TestParse(t *testing.T) {
	tests := map[string]struct {
		kubeconfig string
		insecure   bool
		wantErr    string
	}{
		"a token and inline CA data are accepted": {kubeconfig: good},
		"an exec plugin is refused and never run": {
			kubeconfig: strings.Replace(good, "    token: abc.def.ghi", "    exec:\n      apiVersion: client.authentication.k8s.io/v1\n      command: /bin/touch\n      args: [/tmp/pwned]", 1),
			insecure:   true, wantErr: "exec plugin",
		},
		"an auth provider is refused": {
			kubeconfig: strings.Replace(good, "    token: abc.def.ghi", "    auth-provider:\n      name: gcp", 1),
			insecure:   true, wantErr: "auth provider",
		},
		"a token file is refused": {
			kubeconfig: strings.Replace(good, "    token: abc.def.ghi", "    tokenFile: /var/run/secrets/token", 1),
			insecure:   true, wantErr: "token from a file",
		},
		"a client certificate file is refused": {
			kubeconfig: strings.Replace(good, "    token: abc.def.ghi", "    token: x\n    client-certificate: /etc/passwd", 1),
			insecure:   true, wantErr: "client certificate from a file",
		},
		"a CA file is refused": {
			kubeconfig: strings.Replace(good, "certificate-authority-data: Y2E=", "certificate-authority: /etc/ssl/ca.pem", 1),
			insecure:   true, wantErr: "CA from a file",
		},
		"disabled TLS verification is refused": {
			kubeconfig: strings.Replace(good, "certificate-authority-data: Y2E=", "insecure-skip-tls-verify: true", 1),
			insecure:   true, wantErr: "disables TLS verification",
		},
		"an exec plugin in a user not in use is refused too": {
			kubeconfig: strings.Replace(good, "contexts:", "- name: other\n  user:\n    exec:\n      apiVersion: client.authentication.k8s.io/v1\n      command: sh\ncontexts:", 1),
			insecure:   true, wantErr: "exec plugin",
		},
		"plain http is refused":     {kubeconfig: strings.Replace(good, "https://", "http://", 1), wantErr: "https://"},
		"no token is refused":       {kubeconfig: strings.Replace(good, "    token: abc.def.ghi", "    {}", 1), wantErr: "no bearer token"},
		"no current context":        {kubeconfig: strings.Replace(good, "current-context: east", "", 1), wantErr: "no current context"},
		"garbage does not parse":    {kubeconfig: "{{{", wantErr: "does not parse"},
		"an empty kubeconfig fails": {kubeconfig: "", wantErr: "empty"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			cfg, token, err := Parse([]byte(tc.kubeconfig))
			if tc.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				if cfg.Host != "https://10.0.0.1:6443" || token != "abc.def.ghi" || string(cfg.CAData) != "ca" {
					t.Fatalf("config %+v token %q", cfg, token)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("want error containing %q, got %v", tc.wantErr, err)
			}
			if errors.Is(err, ErrInsecure) != tc.insecure {
				t.Errorf("errors.Is(err, ErrInsecure) = %v, want %v", errors.Is(err, ErrInsecure), tc.insecure)
			}
		})
	}
}

// FuzzParse: link credentials come from git and from other clusters.
func FuzzParse(f *testing.F) {
	f.Add([]byte(good))
	f.Add([]byte("apiVersion: v1\nkind: Config\nusers:\n- name: x\n  user:\n    exec: {command: sh}\n"))
	f.Add([]byte("{}"))
	f.Fuzz(func(t *testing.T, raw []byte) {
		cfg, _, err := Parse(raw)
		if err != nil {
			return
		}
		if cfg.ExecProvider != nil || cfg.AuthProvider != nil || cfg.BearerTokenFile != "" || cfg.CAFile != "" || cfg.CertFile != "" || cfg.KeyFile != "" || cfg.Insecure {
			t.Fatalf("accepted an unsafe config: %+v", cfg)
		}
	})
}
