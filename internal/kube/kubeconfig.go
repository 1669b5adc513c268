package kube

import (
	"slices"

	"k8s.io/client-go/rest"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// KubeconfigFor builds a kubeconfig with one context per named
// rest.Config, named after it, credentials inline. current is the current
// context; empty means the first name in sorted order.
func KubeconfigFor(configs map[string]*rest.Config, current string) *clientcmdapi.Config {
	kc := clientcmdapi.NewConfig()
	names := make([]string, 0, len(configs))
	for name, cfg := range configs {
		names = append(names, name)
		kc.Clusters[name] = &clientcmdapi.Cluster{
			Server:                   cfg.Host,
			CertificateAuthorityData: cfg.CAData,
			TLSServerName:            cfg.ServerName,
		}
		kc.AuthInfos[name] = &clientcmdapi.AuthInfo{
			ClientCertificateData: cfg.CertData,
			ClientKeyData:         cfg.KeyData,
			Token:                 cfg.BearerToken,
		}
		kc.Contexts[name] = &clientcmdapi.Context{Cluster: name, AuthInfo: name}
	}
	slices.Sort(names)
	if current == "" && len(names) > 0 {
		current = names[0]
	}
	kc.CurrentContext = current
	return kc
}
