// Package link builds what one cluster needs to mirror another: a Secret
// holding a least-privilege kubeconfig for the exporting cluster's
// link-reader ServiceAccount, and a Link naming that cluster's gateway. It
// reads the exporting cluster and changes nothing there except, when asked,
// creating a token through the TokenRequest API.
package link

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	backbonev1alpha1 "github.com/backbone-mesh/backbone/api/v1alpha1"
	"github.com/backbone-mesh/backbone/internal/identity"
	"github.com/backbone-mesh/backbone/internal/install"
)

// Options say which cluster is linked and how its gateway is reached.
type Options struct {
	// ClusterName is the exporting cluster's name (mirrors are <svc>-<name>).
	ClusterName string
	// GatewayAddresses ("host:port") override the gateway Service's.
	GatewayAddresses []string
	// GatewayIdentity overrides the gateway Service's identity annotation.
	GatewayIdentity string
	// APIServer overrides the server URL of the current context, for when
	// the address this machine uses is not the one the other cluster can reach.
	APIServer string
	// CreateToken requests a token for the link-reader ServiceAccount.
	CreateToken bool
	// TokenDuration is the requested token lifetime.
	TokenDuration time.Duration
	// Token is a token obtained elsewhere (--token-file).
	Token string
}

// Result is what `backbone link` prints.
type Result struct {
	Secret *corev1.Secret
	Link   *backbonev1alpha1.Link
	// TokenExpiry is when the created token expires (zero when not created).
	TokenExpiry time.Time
}

// SecretName is the name of the credentials Secret for a linked cluster.
func SecretName(cluster string) string { return "backbone-link-" + cluster }

// ErrNoToken explains what is missing when no token was asked for.
var ErrNoToken = errors.New(`no credentials for the link reader: Kubernetes no longer creates ServiceAccount token Secrets by itself, and backbone link creates a token only when asked.
Either rerun with --create-token (a token for backbone-system/backbone-link-reader through the TokenRequest API, valid for --token-duration),
or create one yourself and pass it with --token-file, e.g.:
  kubectl -n backbone-system create token backbone-link-reader --duration=8760h > token && backbone link ... --token-file token`)

// Generate reads the exporting cluster (cfg, cs: an admin's access to it)
// and builds the Secret and Link.
func Generate(ctx context.Context, cfg *rest.Config, cs kubernetes.Interface, o Options) (*Result, error) {
	if _, err := identity.New("x", o.ClusterName); err != nil {
		return nil, fmt.Errorf("--cluster-name: %w", err)
	}
	if o.CreateToken && o.Token != "" {
		return nil, errors.New("--create-token and --token-file are exclusive")
	}
	addresses, gatewayID, err := gatewayDefaults(ctx, cs, o)
	if err != nil {
		return nil, err
	}
	server, caData, err := serverAndCA(cfg, o.APIServer)
	if err != nil {
		return nil, err
	}
	ns := backbonev1alpha1.SystemNamespace
	if _, err := cs.CoreV1().ServiceAccounts(ns).Get(ctx, install.LinkReaderServiceAccount, metav1.GetOptions{}); err != nil {
		if apierrors.IsNotFound(err) {
			return nil, fmt.Errorf("ServiceAccount %s/%s does not exist in the exporting cluster: install backbone there first (backbone install --cluster-name %s | kubectl apply --server-side -f -)", ns, install.LinkReaderServiceAccount, o.ClusterName)
		}
		return nil, fmt.Errorf("reading ServiceAccount %s/%s: %w", ns, install.LinkReaderServiceAccount, err)
	}
	res := &Result{}
	token := strings.TrimSpace(o.Token)
	switch {
	case o.CreateToken:
		seconds := int64(o.TokenDuration / time.Second)
		tr, err := cs.CoreV1().ServiceAccounts(ns).CreateToken(ctx, install.LinkReaderServiceAccount,
			&authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: &seconds}}, metav1.CreateOptions{})
		if err != nil {
			return nil, fmt.Errorf("creating a token for %s/%s: %w", ns, install.LinkReaderServiceAccount, err)
		}
		token = tr.Status.Token
		res.TokenExpiry = tr.Status.ExpirationTimestamp.Time
	case token == "":
		return nil, ErrNoToken
	}
	kubeconfig, err := Kubeconfig(o.ClusterName, server, caData, token)
	if err != nil {
		return nil, err
	}
	res.Secret = &corev1.Secret{
		TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Secret"},
		ObjectMeta: metav1.ObjectMeta{
			Name: SecretName(o.ClusterName), Namespace: ns,
			Labels: map[string]string{"app.kubernetes.io/part-of": "backbone"},
		},
		Type:       backbonev1alpha1.RemoteKubeconfigSecretType,
		StringData: map[string]string{backbonev1alpha1.KubeconfigKey: string(kubeconfig)},
	}
	res.Link = &backbonev1alpha1.Link{
		TypeMeta: metav1.TypeMeta{APIVersion: backbonev1alpha1.GroupVersion.String(), Kind: "Link"},
		ObjectMeta: metav1.ObjectMeta{
			Name: o.ClusterName, Namespace: ns,
			Labels: map[string]string{"app.kubernetes.io/part-of": "backbone"},
		},
		Spec: backbonev1alpha1.LinkSpec{
			TargetClusterName: o.ClusterName,
			CredentialsSecret: backbonev1alpha1.SecretReference{Name: res.Secret.Name},
			GatewayAddresses:  addresses,
			GatewayIdentity:   gatewayID,
		},
	}
	return res, nil
}

// Kubeconfig is the credential the other cluster stores: one cluster with
// inline CA data, one bearer token, nothing that reads files or runs
// programs (the mirror controller rejects those).
func Kubeconfig(cluster, server string, caData []byte, token string) ([]byte, error) {
	kc := clientcmdapi.NewConfig()
	user := install.LinkReaderServiceAccount + "@" + cluster
	kc.Clusters[cluster] = &clientcmdapi.Cluster{Server: server, CertificateAuthorityData: caData}
	kc.AuthInfos[user] = &clientcmdapi.AuthInfo{Token: token}
	kc.Contexts[cluster] = &clientcmdapi.Context{Cluster: cluster, AuthInfo: user, Namespace: backbonev1alpha1.SystemNamespace}
	kc.CurrentContext = cluster
	return clientcmd.Write(*kc)
}

func serverAndCA(cfg *rest.Config, override string) (string, []byte, error) {
	server := cmp.Or(override, cfg.Host)
	if !strings.HasPrefix(server, "https://") {
		return "", nil, fmt.Errorf("API server %q: the link needs an https:// URL the other cluster can reach (set --api-server)", server)
	}
	ca := cfg.CAData
	if len(ca) == 0 && cfg.CAFile != "" {
		var err error
		if ca, err = os.ReadFile(cfg.CAFile); err != nil {
			return "", nil, fmt.Errorf("reading the API server CA %s: %w", cfg.CAFile, err)
		}
	}
	if len(ca) == 0 {
		// Without it the other cluster would have to skip verification or
		// trust its system roots; neither is a choice to make silently.
		return "", nil, errors.New("the current context has no certificate-authority data for the API server; the link kubeconfig must carry it inline")
	}
	return server, ca, nil
}

// gatewayDefaults fills what the flags left out from the exporting
// cluster's gateway Service.
func gatewayDefaults(ctx context.Context, cs kubernetes.Interface, o Options) ([]backbonev1alpha1.GatewayAddress, string, error) {
	var addresses []backbonev1alpha1.GatewayAddress
	for _, a := range o.GatewayAddresses {
		ga, err := parseAddress(a)
		if err != nil {
			return nil, "", err
		}
		addresses = append(addresses, ga)
	}
	id := o.GatewayIdentity
	if len(addresses) == 0 || id == "" {
		ns, name := backbonev1alpha1.SystemNamespace, backbonev1alpha1.GatewayServiceName
		svc, err := cs.CoreV1().Services(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return nil, "", fmt.Errorf("reading the gateway Service %s/%s for defaults (or pass --gateway-address and --gateway-identity): %w", ns, name, err)
		}
		if len(addresses) == 0 {
			if addresses, err = ServiceAddresses(svc); err != nil {
				return nil, "", err
			}
		}
		if id == "" {
			id = svc.Annotations[backbonev1alpha1.GatewayIdentityAnnotation]
			if id == "" {
				return nil, "", fmt.Errorf("the gateway Service %s/%s has no %s annotation: pass --gateway-identity spiffe://<trust-domain>/cluster/%s", ns, name, backbonev1alpha1.GatewayIdentityAnnotation, o.ClusterName)
			}
		}
	}
	parsed, err := identity.Parse(id)
	if err != nil {
		return nil, "", fmt.Errorf("gateway identity: %w", err)
	}
	if parsed.Cluster != o.ClusterName {
		return nil, "", fmt.Errorf("gateway identity %s names cluster %q, not %q", id, parsed.Cluster, o.ClusterName)
	}
	return addresses, id, nil
}

// ServiceAddresses are the reachable addresses of a gateway Service: its
// load balancer's ingress IPs or host names, else its externalIPs, each with
// the "inbound" port; sorted so the output does not depend on the cloud's
// ordering.
func ServiceAddresses(svc *corev1.Service) ([]backbonev1alpha1.GatewayAddress, error) {
	var port int32
	for _, p := range svc.Spec.Ports {
		if p.Name == backbonev1alpha1.GatewayInboundPortName {
			port = p.Port
		}
	}
	if port == 0 {
		return nil, fmt.Errorf("the gateway Service %s/%s has no port named %q", svc.Namespace, svc.Name, backbonev1alpha1.GatewayInboundPortName)
	}
	var hosts []string
	for _, in := range svc.Status.LoadBalancer.Ingress {
		hosts = append(hosts, cmp.Or(in.Hostname, in.IP))
	}
	if len(hosts) == 0 {
		hosts = append(hosts, svc.Spec.ExternalIPs...)
	}
	slices.Sort(hosts)
	hosts = slices.Compact(hosts)
	hosts = slices.DeleteFunc(hosts, func(h string) bool { return h == "" })
	if len(hosts) == 0 {
		return nil, fmt.Errorf("the gateway Service %s/%s has no load balancer address or externalIPs yet: wait for the cloud to assign one (kubectl -n %s get svc %s -w), or pass --gateway-address host:port", svc.Namespace, svc.Name, svc.Namespace, svc.Name)
	}
	out := make([]backbonev1alpha1.GatewayAddress, 0, len(hosts))
	for _, h := range hosts {
		out = append(out, backbonev1alpha1.GatewayAddress{Host: h, Port: port})
	}
	return out, nil
}

func parseAddress(s string) (backbonev1alpha1.GatewayAddress, error) {
	host, portStr, err := net.SplitHostPort(s)
	if err != nil {
		return backbonev1alpha1.GatewayAddress{}, fmt.Errorf("--gateway-address %q: want host:port", s)
	}
	port, err := strconv.ParseInt(portStr, 10, 32)
	if err != nil || port < 1 || port > 65535 || host == "" {
		return backbonev1alpha1.GatewayAddress{}, fmt.Errorf("--gateway-address %q: want host:port with a port 1-65535", s)
	}
	return backbonev1alpha1.GatewayAddress{Host: host, Port: int32(port)}, nil
}
