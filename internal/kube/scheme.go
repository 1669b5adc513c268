package kube

import (
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"

	backbonev1alpha1 "github.com/backbone-mesh/backbone/api/v1alpha1"
)

// Scheme knows the built-in types, backbone's, the MCS API's and the
// Gateway API's (HTTPRoutes made for IngressTargets).
var Scheme = func() *runtime.Scheme {
	s := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{
		clientgoscheme.AddToScheme,
		backbonev1alpha1.AddToScheme,
		mcsv1beta1.Install,
		gatewayv1.Install,
	} {
		if err := add(s); err != nil {
			panic(err)
		}
	}
	return s
}()
