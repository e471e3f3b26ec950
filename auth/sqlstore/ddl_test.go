package sqlstore

import (
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// statements splits SQL text into statements with their blanks collapsed
// and -- comments dropped.
func statements(text string) []string {
	text = regexp.MustCompile(`(?m)--.*$`).ReplaceAllString(text, "")
	var out []string
	for _, s := range strings.Split(text, ";") {
		if s = strings.Join(strings.Fields(s), " "); s != "" {
			out = append(out, s)
		}
	}
	return out
}

// The tables `user init` creates are the ones docs/stores.md gives, word
// for word, and the cluster example's SQL file is PostgreSQL's.
func TestDDLMatchesDocs(t *testing.T) {
	doc, err := os.ReadFile("../../docs/stores.md")
	if err != nil {
		t.Fatal(err)
	}
	var blocks [][]string
	for _, m := range regexp.MustCompile("(?s)```sql\n(.*?)```").FindAllStringSubmatch(string(doc), -1) {
		blocks = append(blocks, statements(m[1]))
	}
	for name, ddl := range map[string][]string{"PostgreSQL": PostgreSQLDDL, "MySQL": MySQLDDL, "SQLite auth_keys": SQLiteDDL, "SQLite authkeys": AuthkeysDDL} {
		want := statements(strings.Join(ddl, ";"))
		if !slices.ContainsFunc(blocks, func(b []string) bool { return slices.Equal(b, want) }) {
			t.Errorf("docs/stores.md has no sql block that is the %s DDL:\n%s", name, strings.Join(ddl, ";\n"))
		}
	}
	example, err := os.ReadFile("../../examples/cluster/auth_keys.sql")
	if err != nil {
		t.Fatal(err)
	}
	if got, want := statements(string(example)), statements(strings.Join(PostgreSQLDDL, ";")); !slices.Equal(got, want) {
		t.Errorf("examples/cluster/auth_keys.sql:\n%q\nwant\n%q", got, want)
	}
}
