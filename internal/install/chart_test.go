package install

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"

	"helm.sh/helm/v4/pkg/chart/common"
	"helm.sh/helm/v4/pkg/chart/common/util"
	"helm.sh/helm/v4/pkg/chart/v2/lint"
	"helm.sh/helm/v4/pkg/chart/v2/lint/support"
	"helm.sh/helm/v4/pkg/chart/v2/loader"
	"helm.sh/helm/v4/pkg/engine"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/yaml"

	"github.com/backbone-mesh/backbone/internal/testenv"
)

var chartDir = filepath.Join("..", "..", "charts", "backbone")

// valuesMap turns Values into the map Helm takes, through their JSON names.
func valuesMap(t *testing.T, v Values) map[string]any {
	t.Helper()
	raw, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]any{}
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

// renderChart is `helm template` through the Helm Go library.
func renderChart(t *testing.T, v Values) map[string]map[string]any {
	t.Helper()
	chrt, err := loader.Load(chartDir)
	if err != nil {
		t.Fatal(err)
	}
	vals, err := util.ToRenderValues(chrt, valuesMap(t, v), common.ReleaseOptions{Name: "backbone", Namespace: "backbone-system", IsInstall: true}, nil)
	if err != nil {
		t.Fatal(err)
	}
	files, err := engine.Render(chrt, vals)
	if err != nil {
		t.Fatal(err)
	}
	names := make([]string, 0, len(files))
	for name := range files {
		names = append(names, name)
	}
	sort.Strings(names)
	out := map[string]map[string]any{}
	for _, name := range names {
		if !strings.HasSuffix(name, ".yaml") {
			continue
		}
		for _, doc := range strings.Split("\n"+files[name], "\n---") {
			obj := map[string]any{}
			if err := yaml.Unmarshal([]byte(doc), &obj); err != nil {
				t.Fatalf("%s: %v\n%s", name, err, doc)
			}
			if len(obj) == 0 {
				continue
			}
			key := objectKey(obj)
			if _, dup := out[key]; dup {
				t.Errorf("chart renders %s twice", key)
			}
			out[key] = obj
		}
	}
	return out
}

func objectKey(obj map[string]any) string {
	meta, _ := obj["metadata"].(map[string]any)
	return obj["kind"].(string) + "/" + stringOf(meta["namespace"]) + "/" + stringOf(meta["name"])
}

func stringOf(v any) string { s, _ := v.(string); return s }

// renderInstall is `backbone install`, normalized the same way (YAML → JSON
// types) so numbers compare equal.
func renderInstall(t *testing.T, v Values) map[string]map[string]any {
	t.Helper()
	raw, err := Render(v)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]map[string]any{}
	for _, doc := range strings.Split(string(raw), "---\n") {
		obj := map[string]any{}
		if err := yaml.Unmarshal([]byte(doc), &obj); err != nil {
			t.Fatal(err)
		}
		if len(obj) > 0 {
			out[objectKey(obj)] = obj
		}
	}
	return out
}

func TestChartRendersWhatInstallPrints(t *testing.T) {
	cases := map[string]func(*Values){
		"defaults": func(*Values) {},
		"aws with every option on": func(v *Values) {
			v.Cloud = "aws"
			v.TrustDomain = "bank.example"
			v.Image.Tag = "v0.1.0"
			v.CRDs.ServiceExport = true
			v.Metrics.ServiceMonitor = true
			v.Controller.CreateNamespaces = true
			v.Gateway.Replicas = 3
			v.Gateway.InboundPort = 443
			v.Gateway.ServiceAnnotations = map[string]string{"example.com/team": "network", "service.beta.kubernetes.io/aws-load-balancer-scheme": "internal"}
			v.Gateway.LoadBalancerSourceRanges = []string{"10.0.0.0/8"}
			v.Gateway.IPFamilies = []corev1.IPFamily{corev1.IPv6Protocol, corev1.IPv4Protocol}
			v.AdmissionPolicy.ExtraWriters = []string{"system:serviceaccount:flux-system:kustomize-controller", "ops@bank.example"}
		},
		"no admission policy": func(v *Values) { v.AdmissionPolicy.Enabled = false },
		"azure without CRDs or namespace": func(v *Values) {
			v.Cloud = "azure"
			v.CRDs.Install = false
			v.CreateNamespace = false
		},
		"gcp":         func(v *Values) { v.Cloud = "gcp" },
		"one gateway": func(v *Values) { v.Gateway.Replicas = 1 },
		"an IPv4 gateway in any cluster": func(v *Values) {
			v.Gateway.IPFamilies = []corev1.IPFamily{corev1.IPv4Protocol}
		},
		"a trust bundle from a ConfigMap": func(v *Values) {
			v.Gateway.IdentitySecret = "identity-from-cert-manager"
			v.Gateway.TrustBundle = TrustBundleValues{ConfigMap: "backbone-trust-bundle", Key: "bundle.pem"}
		},
	}
	for name, mutate := range cases {
		t.Run(name, func(t *testing.T) {
			v := DefaultValues()
			v.ClusterName = "east"
			mutate(&v)
			chart, cli := renderChart(t, v), renderInstall(t, v)
			// helm uninstall keeps the CRDs (and so every Link); the
			// annotation that says so is Helm's alone.
			for key, obj := range chart {
				if obj["kind"] != "CustomResourceDefinition" {
					continue
				}
				meta := obj["metadata"].(map[string]any)
				annotations, _ := meta["annotations"].(map[string]any)
				if annotations["helm.sh/resource-policy"] != "keep" {
					t.Errorf("%s: helm uninstall would delete it, and every object of it", key)
				}
				delete(annotations, "helm.sh/resource-policy")
				if len(annotations) == 0 {
					delete(meta, "annotations")
				}
			}
			for key, want := range cli {
				got, ok := chart[key]
				if !ok {
					t.Errorf("the chart does not render %s", key)
					continue
				}
				if !reflect.DeepEqual(got, want) {
					g, _ := yaml.Marshal(got)
					w, _ := yaml.Marshal(want)
					t.Errorf("%s differs.\nchart:\n%s\nbackbone install:\n%s", key, g, w)
				}
			}
			for key := range chart {
				if _, ok := cli[key]; !ok {
					t.Errorf("the chart renders %s, backbone install does not", key)
				}
			}
		})
	}
}

// TestChartValuesAreInstallDefaults keeps values.yaml (the documented
// defaults) and DefaultValues identical, key for key.
func TestChartValuesAreInstallDefaults(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join(chartDir, "values.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	js, err := yaml.YAMLToJSON(raw)
	if err != nil {
		t.Fatal(err)
	}
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.DisallowUnknownFields()
	var got Values
	if err := dec.Decode(&got); err != nil {
		t.Fatalf("values.yaml has a key Values lacks: %v", err)
	}
	if want := DefaultValues(); !reflect.DeepEqual(got, want) {
		t.Errorf("values.yaml:\n%+v\nDefaultValues():\n%+v", got, want)
	}
}

// TestChartLints is `helm lint --strict`.
func TestChartLints(t *testing.T) {
	linter := lint.RunAll(chartDir, map[string]any{"clusterName": "east"}, "backbone-system", lint.WithSkipSchemaValidation(false))
	for _, m := range linter.Messages {
		if m.Severity > support.InfoSev {
			t.Errorf("helm lint: %v", m)
		}
	}
}

// TestChartAppliesAndConverges server-side applies the chart's objects to
// a real API server, twice: the second apply changes nothing.
func TestChartAppliesAndConverges(t *testing.T) {
	c := testenv.Start(t, "east")["east"]
	v := DefaultValues()
	v.ClusterName = "east"
	v.CRDs.ServiceExport = true
	rendered := renderChart(t, v)
	keys := make([]string, 0, len(rendered))
	for k := range rendered {
		keys = append(keys, k)
	}
	// Kinds the others depend on first, as install orders them.
	rank := map[string]int{"CustomResourceDefinition": 0, "Namespace": 1}
	sort.Slice(keys, func(i, j int) bool {
		ri, iok := rank[strings.Split(keys[i], "/")[0]]
		rj, jok := rank[strings.Split(keys[j], "/")[0]]
		if !iok {
			ri = 2
		}
		if !jok {
			rj = 2
		}
		if ri != rj {
			return ri < rj
		}
		return keys[i] < keys[j]
	})
	var objs []*unstructured.Unstructured
	for _, k := range keys {
		objs = append(objs, &unstructured.Unstructured{Object: rendered[k]})
	}
	ctx := context.Background()
	if err := Apply(ctx, c.Client, objs); err != nil {
		t.Fatal(err)
	}
	before := resourceVersions(t, c.Client, objs)
	if err := Apply(ctx, c.Client, objs); err != nil {
		t.Fatal(err)
	}
	for key, rv := range resourceVersions(t, c.Client, objs) {
		if before[key] != rv {
			t.Errorf("%s changed on the second apply", key)
		}
	}
}
