package jsonfile

import (
	"testing"
)

// FuzzParse: a user file of any content is accepted whole or refused with a
// reason; what is accepted can log in (a secret) and has an owner.
func FuzzParse(f *testing.F) {
	for _, s := range []string{
		`{"sensor1": {"owner": "alice", "secret": "s3cret", "pubchans": ["a"], "subchans": []}}`,
		`{"s": {"secret": "x"}}`, `{"s": {"secret": ""}}`, `{"s": {}}`, `{"s": null}`, `{"": {"secret": "x"}}`,
		`{"s": {"secret": "x", "pubchans": "a"}}`, `{"s": {"secret": "x", "pubchans": [1]}}`,
		`{"s": {"secret": 1}}`, `[]`, `null`, `{}`, ``, `{`, `{"s": {"secret": "x"}, "s": {"secret": "y"}}`,
		"\xef\xbb\xbf{}", `{"s": {"secret": "x", "extra": {"deep": [1, 2, {"x": null}]}}}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		users, err := Parse(data)
		if err != nil {
			return
		}
		for ident, u := range users {
			if u.Ident != ident || u.Secret == "" || u.Owner == "" {
				t.Fatalf("accepted %q as %+v", ident, u)
			}
		}
	})
}
