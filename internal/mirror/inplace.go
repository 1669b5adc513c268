package mirror

import (
	"context"

	corev1 "k8s.io/api/core/v1"
	toolscache "k8s.io/client-go/tools/cache"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// servicesInPlace returns every Service an informer cache holds, as the
// cache's own pointers: the caller reads them and must never modify them.
//
// A whole-Link pass reads every exported remote Service and every local
// one. A List copies each into the list's items even without DeepCopy —
// at 10,000 Services two 6 MB arrays per pass, live while the pass runs
// and so counted in the heap the next collection aims at, which is what
// sets the controller's peak memory. The informer's indexer hands out
// pointers instead. A cache that keeps Services in several informers
// (restricted to namespaces) has no single indexer: it is listed.
func servicesInPlace(ctx context.Context, c cache.Cache) ([]*corev1.Service, error) {
	inf, err := c.GetInformer(ctx, &corev1.Service{})
	if err != nil {
		return nil, err
	}
	if ix, ok := inf.(interface{ GetIndexer() toolscache.Indexer }); ok {
		items := ix.GetIndexer().List()
		out := make([]*corev1.Service, 0, len(items))
		for _, it := range items {
			if s, ok := it.(*corev1.Service); ok {
				out = append(out, s)
			}
		}
		return out, nil
	}
	var list corev1.ServiceList
	if err := c.List(ctx, &list, client.UnsafeDisableDeepCopy); err != nil {
		return nil, err
	}
	out := make([]*corev1.Service, len(list.Items))
	for i := range list.Items {
		out[i] = &list.Items[i]
	}
	return out, nil
}
