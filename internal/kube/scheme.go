package kube

import (
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"

	backbonev1alpha1 "github.com/backbone-mesh/backbone/api/v1alpha1"
)

// Scheme knows the built-in types, backbone's, and the MCS API's.
var Scheme = func() *runtime.Scheme {
	s := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{
		clientgoscheme.AddToScheme,
		backbonev1alpha1.AddToScheme,
		mcsv1beta1.Install,
	} {
		if err := add(s); err != nil {
			panic(err)
		}
	}
	return s
}()
