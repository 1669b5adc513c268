package testenv

import (
	"context"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func createNamespace(c *Cluster, name string) error {
	err := c.Client.Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}})
	if apierrors.IsAlreadyExists(err) {
		return nil
	}
	return err
}

// CreateNamespace creates a namespace if it does not exist yet.
func (c *Cluster) CreateNamespace(name string) error { return createNamespace(c, name) }
