package env

import (
	"context"
	"os"
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

// One credential, one ident: HPFEEDS_<NAME>_SECRET logs in as NAME
// lower-cased, or as HPFEEDS_<NAME>_IDENT spells it, and as nothing else.
// Only ASCII letters are case-mapped, so "ſ" (which Unicode upper-cases to
// "S") finds no variable at all.
func TestOneSpellingPerCredential(t *testing.T) {
	t.Setenv("HPFEEDS_SENSOR1_SECRET", "s3cret")
	t.Setenv("HPFEEDS_HONEYPOT_SECRET", "s3cret")
	t.Setenv("HPFEEDS_HONEYPOT_IDENT", "HoneyPot")
	s := Store{Getenv: os.Getenv}
	ctx := context.Background()
	for ident, want := range map[string]bool{
		"sensor1": true, "Sensor1": false, "SENSOR1": false, "ſensor1": false, "sensor1 ": false,
		"HoneyPot": true, "honeypot": false, "HONEYPOT": false,
	} {
		u, found, err := auth.Find(ctx, s, ident)
		if err != nil || found != want || found && (u.Ident != ident || u.Owner != ident) {
			t.Errorf("%q: found=%v %+v %v, want found=%v", ident, found, u, err, want)
		}
	}
	if n := varName("ſensör-1"); n != "ſENSöR-1" {
		t.Errorf("varName mapped non-ASCII letters: %q", n)
	}
}
