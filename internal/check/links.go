package check

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"github.com/backbone-mesh/backbone/internal/linkcreds"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	backbonev1alpha1 "github.com/backbone-mesh/backbone/api/v1alpha1"
)

func relinkFix(cluster string) string {
	return fmt.Sprintf("backbone --context %s link --cluster-name %s --create-token | kubectl --context <this cluster> apply -f -", cluster, cluster)
}

// checkLinks checks each Link's credentials: present, free of anything that
// reads files or runs programs, a token not expiring within the warning
// period, and accepted by the linked API server. It returns the Links for
// the mirror checks.
func checkLinks(ctx context.Context, c client.Client, o Options) ([]backbonev1alpha1.Link, []Result) {
	var links backbonev1alpha1.LinkList
	if err := c.List(ctx, &links, client.InNamespace(backbonev1alpha1.SystemNamespace)); err != nil {
		return nil, []Result{fail("links", err.Error(), "")}
	}
	if len(links.Items) == 0 {
		return nil, []Result{pass("links", "none: this cluster mirrors no other")}
	}
	var out []Result
	for _, l := range links.Items {
		out = append(out, checkLinkCredentials(ctx, c, o, &l))
	}
	return links.Items, out
}

func checkLinkCredentials(ctx context.Context, c client.Client, o Options, l *backbonev1alpha1.Link) Result {
	target := l.Spec.TargetClusterName
	check := fmt.Sprintf("link %s credentials", l.Name)
	fix := relinkFix(target)
	var secret corev1.Secret
	key := client.ObjectKey{Namespace: l.Namespace, Name: l.Spec.CredentialsSecret.Name}
	if err := c.Get(ctx, key, &secret); err != nil {
		return fail(check, fmt.Sprintf("Secret %s: %v", key, err), fix)
	}
	raw := secret.Data[backbonev1alpha1.KubeconfigKey]
	if len(raw) == 0 {
		return fail(check, fmt.Sprintf("Secret %s has no %q key", key, backbonev1alpha1.KubeconfigKey), fix)
	}
	cfg, token, err := safeRESTConfig(raw)
	if err != nil {
		return fail(check, fmt.Sprintf("Secret %s: %v", key, err), fix)
	}
	var expiry string
	if exp, ok := tokenExpiry(token); ok {
		left := exp.Sub(o.Now)
		switch {
		case left <= 0:
			return fail(check, fmt.Sprintf("token expired at %s", exp.UTC().Format(time.RFC3339)), fix)
		case left < o.ExpiryWarning:
			return fail(check, fmt.Sprintf("token expires at %s, in %s", exp.UTC().Format(time.RFC3339), left.Round(time.Hour)), fix)
		}
		expiry = ", token expires " + exp.UTC().Format(time.RFC3339)
	}
	cfg.Timeout = o.RemoteTimeout
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return fail(check, err.Error(), fix)
	}
	if _, err := cs.CoreV1().Services("").List(ctx, metav1.ListOptions{Limit: 1}); err != nil {
		return fail(check, fmt.Sprintf("the API server of %s refuses them: %v", target, err), fix)
	}
	return pass(check, "valid, can list Services in "+target+expiry)
}

// safeRESTConfig is the controller's own credential check: what it
// refuses, check refuses.
func safeRESTConfig(raw []byte) (*rest.Config, string, error) {
	cfg, token, err := linkcreds.Parse(raw)
	if err != nil {
		return nil, "", err
	}
	cfg.UserAgent = "backbone-check"
	return cfg, token, nil
}

// tokenExpiry reads a JWT's exp claim without verifying the signature: it
// only tells how long the linked cluster will accept the token, which the
// API server call then confirms.
func tokenExpiry(token string) (time.Time, bool) {
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return time.Time{}, false
	}
	payload, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(parts[1], "="))
	if err != nil {
		return time.Time{}, false
	}
	var claims struct {
		Exp *json.Number `json:"exp"`
	}
	if err := json.Unmarshal(payload, &claims); err != nil || claims.Exp == nil {
		return time.Time{}, false
	}
	sec, err := claims.Exp.Int64()
	if err != nil {
		f, ferr := claims.Exp.Float64()
		if ferr != nil {
			return time.Time{}, false
		}
		sec = int64(f)
	}
	return time.Unix(sec, 0), true
}
