package check

import (
	"encoding/base64"
	"strings"
	"testing"
	"time"
)

func jwt(payload string) string {
	enc := base64.RawURLEncoding.EncodeToString
	return enc([]byte(`{"alg":"RS256"}`)) + "." + enc([]byte(payload)) + ".sig"
}

func TestTokenExpiry(t *testing.T) {
	tests := map[string]struct {
		token  string
		want   time.Time
		wantOK bool
	}{
		"reads the exp claim of a service account token": {token: jwt(`{"exp":1900000000,"sub":"x"}`), want: time.Unix(1900000000, 0), wantOK: true},
		"accepts an exp written as a float":              {token: jwt(`{"exp":1.9e9}`), want: time.Unix(1900000000, 0), wantOK: true},
		"a token without exp has no known expiry":        {token: jwt(`{"sub":"x"}`)},
		"an opaque token has no known expiry":            {token: "abcdef"},
		"a payload that is not JSON is not trusted":      {token: "a." + base64.RawURLEncoding.EncodeToString([]byte("{")) + ".c"},
		"a payload that is not base64 is not trusted":    {token: "a.!!!.c"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got, ok := tokenExpiry(tc.token)
			if ok != tc.wantOK || !got.Equal(tc.want) {
				t.Errorf("tokenExpiry = %v, %v; want %v, %v", got, ok, tc.want, tc.wantOK)
			}
		})
	}
}

const kubeconfigHead = `apiVersion: v1
kind: Config
current-context: east
contexts:
- name: east
  context: {cluster: east, user: reader}
clusters:
- name: east
  cluster:
    server: https://east.example:6443
`

func TestSafeRESTConfigRefusesWhatRunsOrReads(t *testing.T) {
	tests := map[string]struct {
		kubeconfig string
		wantErr    string
	}{
		"accepts inline CA data and a bearer token": {
			kubeconfig: kubeconfigHead + "    certificate-authority-data: Y2E=\nusers:\n- name: reader\n  user: {token: t}\n",
		},
		"refuses an exec plugin": {
			kubeconfig: kubeconfigHead + "    certificate-authority-data: Y2E=\nusers:\n- name: reader\n  user:\n    exec: {apiVersion: client.authentication.k8s.io/v1, command: /bin/sh}\n",
			wantErr:    "exec plugin",
		},
		"refuses a token file": {
			kubeconfig: kubeconfigHead + "    certificate-authority-data: Y2E=\nusers:\n- name: reader\n  user: {tokenFile: /etc/shadow}\n",
			wantErr:    "from a file",
		},
		"refuses a CA file": {
			kubeconfig: kubeconfigHead + "    certificate-authority: /etc/ca.crt\nusers:\n- name: reader\n  user: {token: t}\n",
			wantErr:    "from a file",
		},
		"refuses a missing CA": {
			kubeconfig: kubeconfigHead + "users:\n- name: reader\n  user: {token: t}\n",
			wantErr:    "certificate-authority-data",
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			_, _, err := safeRESTConfig([]byte(tc.kubeconfig))
			if tc.wantErr == "" && err != nil {
				t.Fatalf("unexpected error: %v", err)
			}
			if tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
				t.Fatalf("want an error mentioning %q, got %v", tc.wantErr, err)
			}
		})
	}
}
