// Package linkcreds reads a Link's credentials: a kubeconfig for the
// remote cluster's link-reader ServiceAccount. The kubeconfig comes from
// git or from another cluster, so it is untrusted input: only a bearer
// token and inline CA data are accepted. exec plugins and auth providers
// (which would run code), token files and other file paths (which would
// read this machine's files), and disabled TLS verification are refused,
// and nothing in the kubeconfig is ever executed.
package linkcreds

import (
	"errors"
	"fmt"
	"net/url"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// ErrInsecure marks credentials refused for what they would make backbone
// do; the Link reports reason InsecureCredentials.
var ErrInsecure = errors.New("insecure credentials")

// Parse turns a kubeconfig into a rest.Config for its current context,
// refusing anything but an inline bearer token and inline CA data. It
// returns the token too, for expiry checks.
func Parse(raw []byte) (*rest.Config, string, error) {
	if len(raw) == 0 {
		return nil, "", errors.New("kubeconfig is empty")
	}
	if len(raw) > 1<<20 {
		return nil, "", errors.New("kubeconfig is larger than 1 MiB")
	}
	kc, err := clientcmd.Load(raw)
	if err != nil {
		return nil, "", fmt.Errorf("kubeconfig does not parse: %w", err)
	}
	// Refuse dangerous entries anywhere in the file, not only in the
	// current context: a file that carries an exec plugin is not one to
	// trust at all.
	for name, u := range kc.AuthInfos {
		switch {
		case u.Exec != nil:
			return nil, "", fmt.Errorf("%w: user %q has an exec plugin (%q); it is never run", ErrInsecure, name, u.Exec.Command)
		case u.AuthProvider != nil:
			return nil, "", fmt.Errorf("%w: user %q uses auth provider %q", ErrInsecure, name, u.AuthProvider.Name)
		case u.TokenFile != "":
			return nil, "", fmt.Errorf("%w: user %q reads its token from a file", ErrInsecure, name)
		case u.ClientCertificate != "" || u.ClientKey != "":
			return nil, "", fmt.Errorf("%w: user %q reads a client certificate from a file", ErrInsecure, name)
		case u.Username != "" || u.Password != "":
			return nil, "", fmt.Errorf("%w: user %q uses basic authentication", ErrInsecure, name)
		case u.Impersonate != "" || len(u.ImpersonateGroups) > 0:
			return nil, "", fmt.Errorf("%w: user %q impersonates", ErrInsecure, name)
		}
	}
	for name, c := range kc.Clusters {
		switch {
		case c.CertificateAuthority != "":
			return nil, "", fmt.Errorf("%w: cluster %q reads its CA from a file", ErrInsecure, name)
		case c.InsecureSkipTLSVerify:
			return nil, "", fmt.Errorf("%w: cluster %q disables TLS verification", ErrInsecure, name)
		case c.ProxyURL != "":
			return nil, "", fmt.Errorf("%w: cluster %q sends traffic through a proxy", ErrInsecure, name)
		}
	}
	ctx := kc.Contexts[kc.CurrentContext]
	if ctx == nil {
		return nil, "", errors.New("kubeconfig has no current context")
	}
	cluster, user := kc.Clusters[ctx.Cluster], kc.AuthInfos[ctx.AuthInfo]
	switch {
	case cluster == nil:
		return nil, "", fmt.Errorf("current context %q names a missing cluster %q", kc.CurrentContext, ctx.Cluster)
	case user == nil:
		return nil, "", fmt.Errorf("current context %q names a missing user %q", kc.CurrentContext, ctx.AuthInfo)
	case user.Token == "":
		return nil, "", errors.New("kubeconfig has no bearer token")
	case len(cluster.CertificateAuthorityData) == 0:
		return nil, "", errors.New("kubeconfig has no inline certificate-authority-data")
	}
	u, err := url.Parse(cluster.Server)
	if err != nil || u.Scheme != "https" || u.Host == "" {
		return nil, "", fmt.Errorf("server %q: must be an https:// URL", cluster.Server)
	}
	return &rest.Config{
		Host:            cluster.Server,
		BearerToken:     user.Token,
		TLSClientConfig: rest.TLSClientConfig{CAData: cluster.CertificateAuthorityData, ServerName: cluster.TLSServerName},
	}, user.Token, nil
}
