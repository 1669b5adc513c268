// Package kube loads client configuration the way kubectl does and builds
// the clients backbone's commands share.
package kube

import (
	"fmt"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// Flags are the kubectl-compatible connection flags every command takes.
type Flags struct {
	Kubeconfig string
	Context    string
}

// ClientConfig resolves the kubeconfig with client-go's loading rules:
// --kubeconfig, else $KUBECONFIG (a path list, merged), else ~/.kube/config,
// then in-cluster configuration when none of those exists.
func (f *Flags) ClientConfig() clientcmd.ClientConfig {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = f.Kubeconfig
	overrides := &clientcmd.ConfigOverrides{CurrentContext: f.Context}
	return clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, overrides)
}

// RESTConfig returns the rest.Config for the selected context.
func (f *Flags) RESTConfig() (*rest.Config, error) {
	cfg, err := f.ClientConfig().ClientConfig()
	if err != nil {
		if f.Context != "" {
			return nil, fmt.Errorf("loading kubeconfig context %q: %w", f.Context, err)
		}
		return nil, fmt.Errorf("loading kubeconfig: %w", err)
	}
	cfg.UserAgent = "backbone"
	return cfg, nil
}

// Client returns a controller-runtime client for the selected context that
// knows backbone's types.
func (f *Flags) Client() (client.Client, error) {
	cfg, err := f.RESTConfig()
	if err != nil {
		return nil, err
	}
	return client.New(cfg, client.Options{Scheme: Scheme})
}

// Namespace returns the namespace of the selected context (or "default").
func (f *Flags) Namespace() string {
	ns, _, err := f.ClientConfig().Namespace()
	if err != nil || ns == "" {
		return "default"
	}
	return ns
}
