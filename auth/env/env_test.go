package env

import (
	"context"
	"slices"
	"testing"

	"github.com/hpfeeds-go/hpfeeds/auth"
)

func TestLookup(t *testing.T) {
	t.Setenv("HPFEEDS_SENSOR-1_SECRET", "s3cret")
	t.Setenv("HPFEEDS_SENSOR-1_PUBCHANS", "dionaea.capture, cowrie.sessions")
	t.Setenv("HPFEEDS_OTHER_SECRET", "x")
	t.Setenv("HPFEEDS_OTHER_OWNER", "alice")
	t.Setenv("HPFEEDS_OTHER_SUBCHANS", "a")

	s, err := auth.Open(context.Background(), "env", auth.Options{})
	if err != nil {
		t.Fatal(err)
	}
	u, found, err := s.Lookup(context.Background(), "sensor-1")
	if err != nil || !found {
		t.Fatalf("found=%v err=%v", found, err)
	}
	if u.Owner != "sensor-1" || u.Secret != "s3cret" ||
		!slices.Equal(u.PubChans, []string{"dionaea.capture", "cowrie.sessions"}) || len(u.SubChans) != 0 {
		t.Errorf("got %+v", u)
	}
	u, _, _ = s.Lookup(context.Background(), "other")
	if u.Owner != "alice" || !slices.Equal(u.SubChans, []string{"a"}) {
		t.Errorf("got %+v", u)
	}
	if _, found, _ := s.Lookup(context.Background(), "nobody"); found {
		t.Error("ident without a SECRET variable was found")
	}
}
