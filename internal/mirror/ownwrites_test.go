package mirror

import (
	"errors"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func TestOwnWritesTellsTheControllersEventsFromOthers(t *testing.T) {
	at := func(rv string) *corev1.Service {
		return &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "cart-east", ResourceVersion: rv}}
	}
	var w ownWrites

	// The answer first, then the event: the event is ours.
	w.begin(at(""))
	if w.done(at("6"), nil) {
		t.Error("answer before any event: check asked")
	}
	if !w.seen(at("6")) {
		t.Error("the event of the version written is not taken as ours")
	}
	if w.seen(at("6")) {
		t.Error("a write is taken as ours twice")
	}

	// The event before the answer (what 32 writes in flight often see).
	w.begin(at(""))
	if !w.seen(at("7")) {
		t.Error("an event during the write is not held back")
	}
	if w.done(at("7"), nil) {
		t.Error("the early event was the write's own: check asked")
	}
	if w.seen(at("7")) {
		t.Error("the write's event was consumed already")
	}

	// Someone else's version arrives during the write: checked after all.
	w.begin(at(""))
	w.seen(at("8"))
	if !w.done(at("9"), nil) {
		t.Error("another version during the write: no check")
	}

	// After the answer, another version than the one written.
	w.begin(at(""))
	w.done(at("10"), nil)
	if w.seen(at("11")) {
		t.Error("another version after the write is taken as ours")
	}

	// A failed write: any event during it is someone else's.
	w.begin(at(""))
	if w.done(at(""), errors.New("conflict")) {
		t.Error("failed write without events: check asked")
	}
	if w.seen(at("12")) {
		t.Error("after a failed write an event is taken as ours")
	}
	w.begin(at(""))
	w.seen(at("13"))
	if !w.done(at(""), errors.New("conflict")) {
		t.Error("failed write with an event during it: no check")
	}
	if len(w.m) != 0 {
		t.Errorf("%d writes left behind", len(w.m))
	}
}
