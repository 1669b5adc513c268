// Package installtest runs test clusters with the access `backbone
// install` grants, apart from internal/testenv so that packages install
// depends on can still use testenv in their own tests.
package installtest

import (
	"context"
	"testing"

	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	backbonev1alpha1 "github.com/backbone-mesh/backbone/api/v1alpha1"
	"github.com/backbone-mesh/backbone/internal/install"
	"github.com/backbone-mesh/backbone/internal/kube"
	"github.com/backbone-mesh/backbone/internal/testenv"
)

// AsController is the cluster as the controller's ServiceAccount sees it,
// with the access `backbone install` grants it (applied here): a
// controller run on the returned Config has no more than that.
func AsController(t testing.TB, c *testenv.Cluster) *testenv.Cluster {
	t.Helper()
	v := install.DefaultValues()
	v.ClusterName = c.Name
	objs, err := install.Access(v)
	if err != nil {
		t.Fatal(err)
	}
	if err := install.Apply(context.Background(), c.Client, objs); err != nil {
		t.Fatal(err)
	}
	as := *c
	as.Config = rest.CopyConfig(c.Config)
	as.Config.Impersonate = rest.ImpersonationConfig{UserName: "system:serviceaccount:" + backbonev1alpha1.SystemNamespace + ":" + install.ControllerName}
	if as.Client, err = client.New(as.Config, client.Options{Scheme: kube.Scheme}); err != nil {
		t.Fatal(err)
	}
	return &as
}
