package targets

import (
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

func TestRouteOutcome(t *testing.T) {
	gw := GatewayRef{Namespace: "gateway-system", Name: "public", SectionName: "https"}
	parent := func(ns, name, section string) gatewayv1.ParentReference {
		ref := gatewayv1.ParentReference{Name: gatewayv1.ObjectName(name)}
		if ns != "" {
			ref.Namespace = ptr.To(gatewayv1.Namespace(ns))
		}
		if section != "" {
			ref.SectionName = ptr.To(gatewayv1.SectionName(section))
		}
		return ref
	}
	cond := func(typ gatewayv1.RouteConditionType, st metav1.ConditionStatus, reason string, gen int64) metav1.Condition {
		return metav1.Condition{Type: string(typ), Status: st, Reason: reason, Message: reason + " message", ObservedGeneration: gen}
	}
	accepted := cond(gatewayv1.RouteConditionAccepted, metav1.ConditionTrue, "Accepted", 2)
	tests := map[string]struct {
		parents []gatewayv1.RouteParentStatus
		reason  string
		ready   bool
		message string
	}{
		"is pending while no Gateway has written status": {
			reason: "RoutePending",
		},
		"is serving once the configured Gateway's listener accepted this generation": {
			parents: []gatewayv1.RouteParentStatus{{ParentRef: parent("gateway-system", "public", "https"), Conditions: []metav1.Condition{accepted}}},
			reason:  "Serving", ready: true,
		},
		"ignores another Gateway's acceptance": {
			parents: []gatewayv1.RouteParentStatus{{ParentRef: parent("gateway-system", "internal", "https"), Conditions: []metav1.Condition{accepted}}},
			reason:  "RoutePending",
		},
		"ignores the same Gateway's acceptance on another listener": {
			parents: []gatewayv1.RouteParentStatus{{ParentRef: parent("gateway-system", "public", "http"), Conditions: []metav1.Condition{accepted}}},
			reason:  "RoutePending",
		},
		"takes a parentRef without namespace as the route's own namespace": {
			parents: []gatewayv1.RouteParentStatus{{ParentRef: parent("", "public", "https"), Conditions: []metav1.Condition{accepted}}},
			reason:  "RoutePending", // the route is in services, the Gateway in gateway-system
		},
		"is pending while the acceptance is for an older generation": {
			parents: []gatewayv1.RouteParentStatus{{ParentRef: parent("gateway-system", "public", "https"),
				Conditions: []metav1.Condition{cond(gatewayv1.RouteConditionAccepted, metav1.ConditionTrue, "Accepted", 1)}}},
			reason: "RoutePending",
		},
		"reports the Gateway's refusal with its reason": {
			parents: []gatewayv1.RouteParentStatus{{ParentRef: parent("gateway-system", "public", "https"),
				Conditions: []metav1.Condition{cond(gatewayv1.RouteConditionAccepted, metav1.ConditionFalse, "NoMatchingListenerHostname", 2)}}},
			reason: "RouteNotAccepted", message: "NoMatchingListenerHostname",
		},
		"is not ready when the Gateway cannot resolve the backend": {
			parents: []gatewayv1.RouteParentStatus{{ParentRef: parent("gateway-system", "public", "https"),
				Conditions: []metav1.Condition{accepted, cond(gatewayv1.RouteConditionResolvedRefs, metav1.ConditionFalse, "BackendNotFound", 2)}}},
			reason: "BackendNotResolved", message: "BackendNotFound",
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			route := &gatewayv1.HTTPRoute{
				ObjectMeta: metav1.ObjectMeta{Namespace: "services", Name: "service-a-services-west", Generation: 2},
				Status:     gatewayv1.HTTPRouteStatus{RouteStatus: gatewayv1.RouteStatus{Parents: tc.parents}},
			}
			o := routeOutcome(route, gw)
			if o.reason != tc.reason || (o.status == metav1.ConditionTrue) != tc.ready || !strings.Contains(o.message, tc.message) {
				t.Fatalf("got %s %s %q, want %s ready=%v with %q", o.status, o.reason, o.message, tc.reason, tc.ready, tc.message)
			}
		})
	}
}

func TestParseGatewayRef(t *testing.T) {
	tests := map[string]struct {
		in   string
		want GatewayRef
		err  string
	}{
		"reads namespace and name":                {in: "gateway-system/public", want: GatewayRef{Namespace: "gateway-system", Name: "public"}},
		"reads a listener's section name":         {in: "gateway-system/public/https", want: GatewayRef{Namespace: "gateway-system", Name: "public", SectionName: "https"}},
		"refuses a name alone":                    {in: "public", err: "want namespace/name"},
		"refuses more than three parts":           {in: "a/b/c/d", err: "want namespace/name"},
		"refuses a namespace that is not a label": {in: "Gateway_System/public", err: "namespace"},
		"refuses an empty name":                   {in: "gateway-system/", err: "name"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got, err := ParseGatewayRef(tc.in)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error %v, want one with %q", err, tc.err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("got %+v, %v; want %+v", got, err, tc.want)
			}
			if got.String() != tc.in {
				t.Fatalf("String() = %q, want %q", got.String(), tc.in)
			}
		})
	}
}
