package kube

import (
	"fmt"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/client-go/discovery"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"
)

// ServesServiceExports asks an API server whether it serves the MCS API's
// ServiceExports. Only its "not found" means no: a failed lookup (a 503
// from a server under load, a timeout) read as "no" would drop every
// Service exported by ServiceExport alone.
func ServesServiceExports(dc discovery.DiscoveryInterface) (bool, error) {
	_, err := dc.ServerResourcesForGroupVersion(mcsv1beta1.GroupVersion.String())
	switch {
	case err == nil:
		return true, nil
	case apierrors.IsNotFound(err):
		return false, nil
	}
	return false, fmt.Errorf("discovery of %s: %w", mcsv1beta1.GroupVersion, err)
}
