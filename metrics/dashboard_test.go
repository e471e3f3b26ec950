package metrics_test

import (
	"encoding/json"
	"os"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/hpfeeds-go/hpfeeds/broker/brokertest"
)

const dashboardPath = "../dashboards/hpfeeds-broker.json"

// queries returns every PromQL expression in a Grafana dashboard: panel
// targets' expr, and the metric of label_values() template queries.
func queries(t *testing.T, v any) (exprs, templateMetrics []string) {
	labelValues := regexp.MustCompile(`^label_values\(\s*([a-zA-Z_:][a-zA-Z0-9_:]*)\s*,`)
	var walk func(key string, v any)
	walk = func(key string, v any) {
		switch v := v.(type) {
		case map[string]any:
			for k, x := range v {
				walk(k, x)
			}
		case []any:
			for _, x := range v {
				walk(key, x)
			}
		case string:
			switch key {
			case "expr":
				exprs = append(exprs, v)
			case "query", "definition":
				if m := labelValues.FindStringSubmatch(v); m != nil {
					templateMetrics = append(templateMetrics, m[1])
				}
			}
		}
	}
	walk("", v)
	return exprs, templateMetrics
}

var (
	promString  = regexp.MustCompile(`"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'`)
	promBraces  = regexp.MustCompile(`\{[^}]*\}`)
	promRange   = regexp.MustCompile(`\[[^\]]*\]`)
	promVar     = regexp.MustCompile(`\$\{[^}]*\}|\$\w+`)
	promGroup   = regexp.MustCompile(`\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)`)
	promIdent   = regexp.MustCompile(`[a-zA-Z_:][a-zA-Z0-9_:]*`)
	promKeyword = []string{"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "group_left", "group_right", "inf", "nan"}
)

// metricNames extracts the metric names a PromQL expression selects: the
// identifiers left once strings, label matchers, ranges, Grafana variables
// and grouping clauses are removed, that are not function calls or
// keywords.
func metricNames(expr string) []string {
	e := promString.ReplaceAllString(expr, `""`)
	e = promBraces.ReplaceAllString(e, " ")
	e = promRange.ReplaceAllString(e, " ")
	e = promVar.ReplaceAllString(e, " ")
	e = promGroup.ReplaceAllString(e, " ")
	var names []string
	for _, m := range promIdent.FindAllStringIndex(e, -1) {
		name := e[m[0]:m[1]]
		if m[0] > 0 && strings.ContainsRune("0123456789.", rune(e[m[0]-1])) {
			continue // the exponent of a number such as 1e3
		}
		if strings.HasPrefix(strings.TrimLeft(e[m[1]:], " \t\n"), "(") || slices.Contains(promKeyword, name) {
			continue // a function or aggregation, or a keyword
		}
		names = append(names, name)
	}
	return names
}

func TestMetricNames(t *testing.T) {
	for expr, want := range map[string][]string{
		`sum by (le, chan) (rate(a_bucket{instance=~"$instance", x="y{z}"}[$__rate_interval]))`:      {"a_bucket"},
		`histogram_quantile(0.99, sum without (ident) (rate(b[5m]))) / on(instance) group_left(x) c`: {"b", "c"},
		`rate(d{job="e"}[1m] offset 1h) > 1e3 and f`:                                                 {"d", "f"},
		`-sum(g)`: {"g"},
	} {
		if got := metricNames(expr); !slices.Equal(got, want) {
			t.Errorf("metricNames(%s) = %v, want %v", expr, got, want)
		}
	}
}

// Every metric the dashboard queries is one a live broker exports after
// ordinary traffic, so no panel stays empty because of a misspelt name.
func TestDashboardQueriesExportedMetrics(t *testing.T) {
	raw, err := os.ReadFile(dashboardPath)
	if err != nil {
		t.Fatal(err)
	}
	var dash any
	if err := json.Unmarshal(raw, &dash); err != nil {
		t.Fatalf("%s is not JSON: %v", dashboardPath, err)
	}
	exprs, used := queries(t, dash)
	if len(exprs) < 10 {
		t.Fatalf("found only %d queries in %s", len(exprs), dashboardPath)
	}
	for _, e := range exprs {
		names := metricNames(e)
		if len(names) == 0 {
			t.Errorf("no metric name found in %q", e)
		}
		used = append(used, names...)
	}

	exported := ordinaryTraffic(t).names()
	sort.Strings(used)
	for _, name := range slices.Compact(used) {
		if _, found := slices.BinarySearch(exported, name); !found {
			t.Errorf("the dashboard queries %s, which the broker does not export", name)
		}
	}
}

// ordinaryTraffic makes every series appear, and returns a scrape taken
// while the clients are still connected: a subscriber and a publisher
// exchange a message, and a login fails.
func ordinaryTraffic(t *testing.T) *scrape {
	e := startExported(t, brokenStore{testUsers()})
	s := brokertest.Dial(t, e.Addr)
	s.Send(s.Auth("sub", "subsecret"), brokertest.Subscribe(t, "sub", "chan"))
	e.waitValue(t, 1, "hpfeeds_broker_subscriptions", "ident", "sub", "chan", "chan")
	p := brokertest.Dial(t, e.Addr)
	p.Send(p.Auth("pub", "pubsecret"), brokertest.Publish(t, "pub", "chan", "event"))
	s.ExpectMessage("pub", "chan", "event")
	bad := brokertest.Dial(t, e.Addr)
	bad.Send(bad.Auth("broken", "x"))
	bad.ExpectError("Authentication failed for broken")
	e.waitValue(t, 1, "hpfeeds_broker_connection_lost_total", "ident", "")
	return e.scrape(t)
}
