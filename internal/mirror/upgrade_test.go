package mirror_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"

	"github.com/backbone-mesh/backbone/api/v1alpha1"
	"github.com/backbone-mesh/backbone/internal/install"
	"github.com/backbone-mesh/backbone/internal/mirror"
	"github.com/backbone-mesh/backbone/internal/testenv"
)

// oldInstall is what `backbone install` printed for east at its first
// release; see the file's header for the command.
const oldInstall = "../install/testdata/upgrade/from-5193b85.yaml"

// otherCluster turns east's install into another cluster's: the name is
// in the gateway identity and the binaries' --cluster-name, nowhere else
// (TestUpgradeFromFirstInstallKeepsMirrors checks that on today's output).
func otherCluster(name string) *strings.Replacer {
	return strings.NewReplacer("--cluster-name=east", "--cluster-name="+name, "/cluster/east", "/cluster/"+name)
}

// upgradeValues are the values oldInstall was rendered with, for today's
// install.
func upgradeValues(cluster string) install.Values {
	v := install.DefaultValues()
	v.ClusterName, v.TrustDomain, v.Cloud = cluster, "bank.example", "aws"
	v.Image.Tag = "v0.1.0"
	v.CRDs.ServiceExport = true
	return v
}

// TestUpgradeFromFirstInstallKeepsMirrors: two clusters run what the first
// `backbone install` printed, west mirrors east's exported services
// (a label, a ServiceExport, a headless StatefulSet-style service). Today's
// install output is server-side applied over it in both clusters, without
// forcing conflicts, while west's controller runs; the controller is then
// replaced by a new instance, as a rolling upgrade does. The CRDs are
// today's, the Link and the ServiceExport are the same objects, and no
// mirror is deleted, recreated or even rewritten. Applying today's output
// again changes nothing.
//
// The controller is today's on both sides of the upgrade, with today's
// RBAC (installtest.AsController): the test is about the install output
// and the objects it governs, not about older controller binaries.
func TestUpgradeFromFirstInstallKeepsMirrors(t *testing.T) {
	raw, err := os.ReadFile(oldInstall)
	if err != nil {
		t.Fatal(err)
	}
	current := map[string][]*unstructured.Unstructured{}
	rendered := map[string]string{}
	for _, name := range []string{"east", "west"} {
		out, err := install.Render(upgradeValues(name))
		if err != nil {
			t.Fatal(err)
		}
		rendered[name] = string(out)
		current[name] = decodeManifests(t, out)
	}
	if otherCluster("west").Replace(rendered["east"]) != rendered["west"] {
		t.Fatal("west's install differs from east's by more than its name: otherCluster no longer makes west's old install")
	}

	clusters := testenv.Start(t, "east", "west")
	east, west := clusters["east"], clusters["west"]
	for name, c := range clusters {
		old := decodeManifests(t, []byte(otherCluster(name).Replace(string(raw))))
		installOnly(t, c, old)
		if linkCRDHasCertificates(t, c) {
			t.Fatalf("%s: the Link CRD already has status.certificates: the old install did not replace testenv's CRDs", name)
		}
		if err := c.CreateNamespace("shop"); err != nil {
			t.Fatal(err)
		}
	}

	registerGatewayEndpoint(t, west, "192.0.2.2") // the old install made the Service
	db := service("shop", "db", exported(), 5432)
	db.Spec.ClusterIP = corev1.ClusterIPNone
	dbPods := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: "shop", Name: "db-pods", Labels: map[string]string{discoveryv1.LabelServiceName: "db", corev1.IsHeadlessService: ""}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("p0"), Port: ptr.To[int32](5432)}},
	}
	for i, ip := range []string{"10.9.0.10", "10.9.0.11"} {
		dbPods.Endpoints = append(dbPods.Endpoints, discoveryv1.Endpoint{Addresses: []string{ip}, Hostname: ptr.To(fmt.Sprintf("db-%d", i)),
			Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)}})
	}
	orderExport := &mcsv1beta1.ServiceExport{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "orders"}}
	for _, o := range []client.Object{service("shop", "cart", exported(), 8080, 9090), service("shop", "orders", nil, 80), orderExport, db, dbPods} {
		if err := east.Client.Create(bg, o); err != nil {
			t.Fatal(err)
		}
	}
	// The link reader's ServiceAccount and ClusterRole are east's old
	// install's. runController applies today's RBAC in west (today's
	// controller needs it), so west's RBAC is upgraded here, east's with
	// the rest of the install below.
	link := createLink(t, west, "east", linkReaderKubeconfig(t, east, east.Config.Host))
	stop := runController(t, west)
	mirrors := []string{"cart-east", "orders-east", "db-east", "db-0-db-east", "db-1-db-east"}
	eventually(t, "east's services are mirrored in west and the Link is synced", func() bool {
		for _, name := range mirrors {
			if _, ok := get(west, "shop", name, &corev1.Service{}); !ok {
				return false
			}
		}
		c := linkReady(west, "east")
		return c != nil && c.Reason == mirror.ReasonSynced
	})
	before := settledMirrors(t, west)
	for _, name := range mirrors {
		if !slices.ContainsFunc(slices.Collect(maps.Keys(before)), func(k string) bool { return strings.HasPrefix(k, "slice shop/"+name) }) {
			t.Fatalf("%s has no EndpointSlice before the upgrade: %v", name, before)
		}
	}

	// The upgrade, under the running controller: CRDs first, as in the
	// output's order, then RBAC and workloads.
	for name, c := range clusters {
		for _, o := range current[name] {
			// As `kubectl apply --server-side` without --force-conflicts:
			// a field another manager owns is an error here.
			if err := c.Client.Apply(bg, client.ApplyConfigurationFromUnstructured(o.DeepCopy()), client.FieldOwner(install.FieldOwner)); err != nil {
				t.Fatalf("%s: applying today's %s %s over the old install: %v", name, o.GetKind(), client.ObjectKeyFromObject(o), err)
			}
		}
		waitEstablished(t, c, current[name])
		checkCRDsAre(t, c, current[name])
		if !linkCRDHasCertificates(t, c) {
			t.Errorf("%s: the Link CRD has no status.certificates after the upgrade", name)
		}
	}
	applied := map[string]map[string]string{}
	for name, c := range clusters {
		applied[name] = liveResourceVersions(t, c, current[name])
	}

	// The rolling upgrade replaces the controller; a service exported
	// while none runs shows the new one has synced the Link.
	stop()
	if err := east.Client.Create(bg, service("shop", "late", exported(), 80)); err != nil {
		t.Fatal(err)
	}
	runController(t, west)
	eventually(t, "the new controller mirrors late-east and the Link is synced", func() bool {
		_, svc := get(west, "shop", "late-east", &corev1.Service{})
		_, slice := get(west, "shop", "late-east", &discoveryv1.EndpointSlice{})
		c := linkReady(west, "east")
		return svc && slice && c != nil && c.Reason == mirror.ReasonSynced && c.Message == fmt.Sprintf("%d mirrors in sync", len(mirrors)+1)
	})
	after := settledMirrors(t, west)
	for key, was := range before {
		now, ok := after[key]
		switch {
		case !ok:
			t.Errorf("%s was deleted by the upgrade", key)
		case strings.Fields(now)[0] != strings.Fields(was)[0]:
			t.Errorf("%s was recreated by the upgrade: uid/resourceVersion %s -> %s", key, was, now)
		case now != was:
			t.Errorf("%s was rewritten by the upgrade: resourceVersion %s -> %s", key, strings.Fields(was)[1], strings.Fields(now)[1])
		}
	}
	for key := range after {
		if _, ok := before[key]; !ok && key != "svc shop/late-east" && key != "slice shop/late-east" {
			t.Errorf("%s appeared with the upgrade", key)
		}
	}
	t.Logf("%d mirror objects (Services and EndpointSlices) kept their UIDs and resourceVersions across the upgrade", len(before))
	if l, _ := get(west, v1alpha1.SystemNamespace, "east", &v1alpha1.Link{}); l.UID != link.UID {
		t.Errorf("the Link was recreated: uid %s -> %s", link.UID, l.UID)
	}
	if se, _ := get(east, "shop", "orders", &mcsv1beta1.ServiceExport{}); se.UID != orderExport.UID {
		t.Errorf("the ServiceExport was recreated: uid %s -> %s", orderExport.UID, se.UID)
	}

	// Today's output applied again, forced as install.Apply does, after
	// the controller's restart re-applied its RBAC: nothing changes.
	for name, c := range clusters {
		if err := install.Apply(bg, c.Client, current[name]); err != nil {
			t.Fatalf("%s: applying today's install again: %v", name, err)
		}
		again := liveResourceVersions(t, c, current[name])
		for key, rv := range applied[name] {
			if again[key] != rv {
				t.Errorf("%s: %s changed after the upgrade: resourceVersion %s -> %s", name, key, rv, again[key])
			}
		}
	}
	if final := mirrorIdentities(t, west); !maps.Equal(final, after) {
		t.Errorf("mirrors changed when today's install was applied again:\nbefore %v\nafter  %v", after, final)
	}
}

// decodeManifests reads a `backbone install` YAML stream.
func decodeManifests(t *testing.T, raw []byte) []*unstructured.Unstructured {
	t.Helper()
	var out []*unstructured.Unstructured
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(raw), 4096)
	for {
		obj := map[string]any{}
		if err := dec.Decode(&obj); errors.Is(err, io.EOF) {
			return out
		} else if err != nil {
			t.Fatal(err)
		}
		if len(obj) > 0 { // the header comment
			out = append(out, &unstructured.Unstructured{Object: obj})
		}
	}
}

// installOnly makes c a cluster where objs alone were applied. testenv
// created today's CRDs: each is put back to the old one, and after the
// apply of objs only that apply's field manager is kept, as if it had
// created them. (Deleting them instead waits on the API server's CRD
// finalizer, which took over 45 s on a loaded machine.)
func installOnly(t *testing.T, c *testenv.Cluster, objs []*unstructured.Unstructured) {
	t.Helper()
	var crds []*unstructured.Unstructured
	for _, o := range objs {
		if o.GetKind() != "CustomResourceDefinition" {
			continue
		}
		crds = append(crds, o)
		live := liveObject(t, c, o)
		live.Object["spec"] = o.DeepCopy().Object["spec"]
		live.SetLabels(o.GetLabels())
		live.SetAnnotations(o.GetAnnotations())
		if err := c.Client.Update(bg, live); err != nil {
			t.Fatalf("%s: replacing %s: %v", c.Name, o.GetName(), err)
		}
	}
	if err := install.Apply(bg, c.Client, objs); err != nil {
		t.Fatalf("%s: applying the old install: %v", c.Name, err)
	}
	for _, o := range crds {
		live := liveObject(t, c, o)
		managers := slices.DeleteFunc(live.GetManagedFields(), func(m metav1.ManagedFieldsEntry) bool {
			return m.Manager != install.FieldOwner && m.Subresource == ""
		})
		live.SetManagedFields(managers)
		if err := c.Client.Update(bg, live); err != nil {
			t.Fatalf("%s: keeping only %s's fields of %s: %v", c.Name, install.FieldOwner, o.GetName(), err)
		}
		for _, m := range liveObject(t, c, o).GetManagedFields() {
			if m.Manager != install.FieldOwner && m.Subresource == "" {
				t.Fatalf("%s: %s is also managed by %s (%s)", c.Name, o.GetName(), m.Manager, m.Operation)
			}
		}
	}
	waitEstablished(t, c, objs)
}

func waitEstablished(t *testing.T, c *testenv.Cluster, objs []*unstructured.Unstructured) {
	t.Helper()
	for _, o := range objs {
		if o.GetKind() != "CustomResourceDefinition" {
			continue
		}
		eventually(t, c.Name+": "+o.GetName()+" is established", func() bool {
			live := liveObject(t, c, o)
			conds, _, _ := unstructured.NestedSlice(live.Object, "status", "conditions")
			for _, cond := range conds {
				m, _ := cond.(map[string]any)
				if m["type"] == "Established" && m["status"] == "True" {
					return true
				}
			}
			return false
		})
	}
}

// checkCRDsAre compares every CRD's served schemas and columns with the
// install's.
func checkCRDsAre(t *testing.T, c *testenv.Cluster, objs []*unstructured.Unstructured) {
	t.Helper()
	for _, o := range objs {
		if o.GetKind() != "CustomResourceDefinition" {
			continue
		}
		want, _, _ := unstructured.NestedSlice(o.Object, "spec", "versions")
		got, _, _ := unstructured.NestedSlice(liveObject(t, c, o).Object, "spec", "versions")
		if len(got) != len(want) {
			t.Errorf("%s: %s serves %d versions, the install %d", c.Name, o.GetName(), len(got), len(want))
			continue
		}
		for i := range want {
			w, g := want[i].(map[string]any), got[i].(map[string]any)
			for _, field := range []string{"name", "schema", "additionalPrinterColumns"} {
				if jw, jg := asJSON(t, w[field]), asJSON(t, g[field]); jw != jg && !(field == "additionalPrinterColumns" && samePrinterColumns(t, w[field], g[field])) {
					t.Errorf("%s: %s version %v: %s is not the install's", c.Name, o.GetName(), w["name"], field)
				}
			}
		}
	}
}

// samePrinterColumns ignores the priority 0 the API server may spell out.
func samePrinterColumns(t *testing.T, want, got any) bool {
	w, _ := want.([]any)
	g, _ := got.([]any)
	if len(w) != len(g) {
		return false
	}
	for i := range w {
		gc := maps.Clone(g[i].(map[string]any))
		if _, ok := w[i].(map[string]any)["priority"]; !ok && fmt.Sprint(gc["priority"]) == "0" {
			delete(gc, "priority")
		}
		if asJSON(t, w[i]) != asJSON(t, gc) {
			return false
		}
	}
	return true
}

// asJSON spells values decoded from YAML (float64 numbers) and read
// from the API server (int64 numbers) alike.
func asJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func linkCRDHasCertificates(t *testing.T, c *testenv.Cluster) bool {
	t.Helper()
	crd := &unstructured.Unstructured{}
	crd.SetGroupVersionKind(schema.GroupVersionKind{Group: "apiextensions.k8s.io", Version: "v1", Kind: "CustomResourceDefinition"})
	if err := c.Client.Get(bg, client.ObjectKey{Name: "links.backbone.dev"}, crd); err != nil {
		t.Fatal(err)
	}
	versions, _, _ := unstructured.NestedSlice(crd.Object, "spec", "versions")
	for _, v := range versions {
		if _, ok, _ := unstructured.NestedMap(v.(map[string]any), "schema", "openAPIV3Schema", "properties", "status", "properties", "certificates"); ok {
			return true
		}
	}
	return false
}

func liveObject(t *testing.T, c *testenv.Cluster, o *unstructured.Unstructured) *unstructured.Unstructured {
	t.Helper()
	live := &unstructured.Unstructured{}
	live.SetGroupVersionKind(o.GroupVersionKind())
	if err := c.Client.Get(bg, client.ObjectKeyFromObject(o), live); err != nil {
		t.Fatal(err)
	}
	return live
}

func liveResourceVersions(t *testing.T, c *testenv.Cluster, objs []*unstructured.Unstructured) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, o := range objs {
		out[o.GetKind()+" "+client.ObjectKeyFromObject(o).String()] = liveObject(t, c, o).GetResourceVersion()
	}
	return out
}

// mirrorIdentities is snapshot by object: "svc ns/name" or "slice
// ns/name" to "uid resourceVersion".
func mirrorIdentities(t *testing.T, c *testenv.Cluster) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, entry := range strings.Split(snapshot(t, c), "; ") {
		if f := strings.Fields(entry); len(f) == 4 {
			out[f[0]+" "+f[1]] = f[2] + " " + f[3]
		}
	}
	return out
}

// settledMirrors waits until the mirrors stay the same over a few of the
// controller's resyncs (2 s in runController) and returns them.
func settledMirrors(t *testing.T, c *testenv.Cluster) map[string]string {
	t.Helper()
	deadline := time.Now().Add(45 * time.Second)
	prev := mirrorIdentities(t, c)
	for {
		time.Sleep(5 * time.Second)
		cur := mirrorIdentities(t, c)
		if maps.Equal(cur, prev) {
			return cur
		}
		if time.Now().After(deadline) {
			t.Fatalf("mirrors in %s keep changing:\n%v\n%v", c.Name, prev, cur)
		}
		prev = cur
	}
}
