package status_test

import (
	"bytes"
	"context"
	"html"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/hpfeeds-go/hpfeeds/auth/storetest"
	"github.com/hpfeeds-go/hpfeeds/broker/brokertest"
)

// chromium is the browser of the page test: Debian's package, which the
// Makefile's deps target installs. Only outside CI may it be missing.
func chromium(t *testing.T) string {
	path, err := exec.LookPath("chromium")
	if err != nil {
		storetest.Missing(t, "chromium is not installed; `make deps` (apt-get install chromium) installs it")
	}
	return path
}

// browse runs headless chromium on url with the extra flags and returns
// what it printed.
func browse(t *testing.T, url string, flags ...string) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	args := append([]string{"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--no-first-run", "--hide-scrollbars", "--user-data-dir=" + t.TempDir()}, flags...)
	cmd := exec.CommandContext(ctx, chromium(t), append(args, url)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("chromium %v: %v\n%s", flags, err, stderr.Bytes())
	}
	return out
}

var (
	tag    = regexp.MustCompile(`<[^>]*>`)
	spaces = regexp.MustCompile(`\s+`)
	digits = regexp.MustCompile(`[0-9]+`)
	sizes  = regexp.MustCompile(`[0-9.]+ [KMGTPE]?i?B\b`)
)

// text is what a person reads in an HTML fragment.
func text(fragment string) string {
	return strings.TrimSpace(spaces.ReplaceAllString(html.UnescapeString(tag.ReplaceAllString(fragment, " ")), " "))
}

// rows returns the text of each body row of the table with id.
func rows(t *testing.T, dom, id string) []string {
	t.Helper()
	start := strings.Index(dom, `<table id="`+id+`">`)
	if start < 0 {
		t.Fatalf("no table %s in the page", id)
	}
	table := dom[start:]
	table = table[:strings.Index(table, "</table>")]
	body := table[strings.Index(table, "<tbody>"):]
	var out []string
	for _, r := range strings.Split(body, "<tr")[1:] {
		out = append(out, text("<tr"+r))
	}
	return out
}

func findRow(t *testing.T, rows []string, prefix string) string {
	t.Helper()
	for _, r := range rows {
		if strings.HasPrefix(r, prefix) {
			return r
		}
	}
	t.Fatalf("no row starting %q in %q", prefix, rows)
	return ""
}

// The status page in a real browser: a broker with a subscriber, a sensor
// publishing and one that went quiet. The page is asserted from the DOM
// the browser built; its screenshot is kept in testdata/ whenever what it
// shows (numbers aside) changes.
func TestStatusPageInBrowser(t *testing.T) {
	chromium(t)
	const staleAfter = 2 * time.Second
	f := start(t, staleAfter)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { // the sensor stays alive while the browser looks
		for ctx.Err() == nil {
			f.sensor.Publish("events", []byte(payload))
			time.Sleep(200 * time.Millisecond)
		}
	}()
	brokertest.Eventually(t, "quiet to go stale", func() bool {
		for _, in := range f.srv.Broker.Idents(staleAfter) {
			if in.Ident == "quiet" {
				return in.Stale
			}
		}
		return false
	})

	dom := string(browse(t, f.url+"/", "--dump-dom"))
	if !strings.Contains(dom, "<title>test-broker · hpfeeds broker status</title>") {
		t.Errorf("title missing from:\n%s", dom)
	}
	for id, want := range map[string]string{"n-connections": "2", "n-sensors": "2 / 3", "n-stale": "1", "n-channels": "1", "n-unheard": "0"} {
		if !strings.Contains(dom, `id="`+id+`">`+want+`<`) {
			t.Errorf("card %s does not show %q", id, want)
		}
	}
	sensors := rows(t, dom, "sensors")
	if len(sensors) != 3 || !strings.HasPrefix(sensors[0], "quiet alice stale 0 ") {
		t.Errorf("sensors: want the stale one first, got %q", sensors)
	}
	if r := findRow(t, sensors, "quiet"); !strings.Contains(r, "closed by the client") || !strings.Contains(r, "events") {
		t.Errorf("quiet row %q", r)
	}
	if r := findRow(t, sensors, "sensor"); !regexp.MustCompile(`^sensor alice connected 1 (just now|\ds ago) `).MatchString(r) {
		t.Errorf("sensor row %q", r)
	}
	if r := findRow(t, sensors, "logger"); !strings.HasPrefix(r, "logger bob connected 1 subscriber") {
		t.Errorf("logger row %q", r)
	}
	if !strings.Contains(dom, `<tr class="stale">`) || strings.Count(dom, `<span class="pill bad">stale</span>`) != 1 {
		t.Errorf("the stale sensor is not marked once")
	}
	if r := findRow(t, rows(t, dom, "channels"), "events"); !strings.HasPrefix(r, "events 1 1 ") {
		t.Errorf("channel row %q", r)
	}
	conns := rows(t, dom, "connections")
	if len(conns) != 2 || !strings.Contains(conns[0], "logger 127.0.0.1:") || !strings.Contains(conns[0], "tcp:127.0.0.1:0") ||
		!strings.Contains(conns[0], " events ") || !strings.Contains(conns[1], "sensor 127.0.0.1:") {
		t.Errorf("connections %q", conns)
	}
	screenshot(t, f.url, dom)
}

// screenshot keeps testdata/status-page.png, with the page's text (numbers
// masked) beside it: both are written when the text differs.
func screenshot(t *testing.T, url, dom string) {
	shape := text(dom[strings.Index(dom, "<body>"):])
	shape = digits.ReplaceAllString(sizes.ReplaceAllString(shape, "# B"), "#") + "\n"
	old, _ := os.ReadFile(filepath.Join("testdata", "status-page.txt"))
	if string(old) == shape {
		return
	}
	png := filepath.Join(t.TempDir(), "page.png")
	browse(t, url+"/", "--window-size=1400,860", "--screenshot="+png)
	img, err := os.ReadFile(png)
	if err != nil || !bytes.HasPrefix(img, []byte("\x89PNG")) {
		t.Fatalf("chromium wrote no PNG screenshot: %v", err)
	}
	os.MkdirAll("testdata", 0o755)
	if err := os.WriteFile(filepath.Join("testdata", "status-page.png"), img, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join("testdata", "status-page.txt"), []byte(shape), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("the page changed: wrote testdata/status-page.png")
}
