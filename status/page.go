package status

import (
	"bytes"
	"embed"
	"fmt"
	"html/template"
	"log/slog"
	"slices"
	"time"

	"github.com/hpfeeds-go/hpfeeds/broker"
)

//go:embed assets
var assets embed.FS

// PageConnections bounds the connections the page lists; /connz pages
// through all of them.
const PageConnections = 200

// RefreshSeconds is how often the page reloads itself.
const RefreshSeconds = 5

var page = template.Must(template.New("page.html").Funcs(template.FuncMap{
	"ago":   ago,
	"bytes": humanBytes,
	"rate":  func(f float64) string { return fmt.Sprintf("%.1f", f) },
	"css": func() template.CSS {
		b, _ := assets.ReadFile("assets/style.css")
		return template.CSS(b)
	},
}).ParseFS(assets, "assets/page.html"))

// pageData is what the template shows.
type pageData struct {
	Options
	Refresh     int
	Now         time.Time
	Idents      *Identz
	Connected   int
	Channels    *Chanz
	Unheard     int // channels flagged Unheard
	Conns       *Connz
	ConnsHidden int
}

// page renders the status page, or returns nil if it could not.
func (p *pages) page() []byte {
	idents := *p.identz()
	// Sorted below: a copy, as the answer is shared.
	idents.Idents = slices.Clone(idents.Idents)
	d := pageData{Options: p.o, Refresh: RefreshSeconds, Now: time.Now(),
		Idents:   &idents,
		Channels: p.chanz(),
		Conns:    p.connz(connQuery{limit: PageConnections, sort: "cid"}),
	}
	d.ConnsHidden = d.Conns.Total - len(d.Conns.Connections)
	// Stale sensors first: they are why the page is open.
	slices.SortStableFunc(d.Idents.Idents, func(x, y broker.IdentInfo) int {
		return bool2int(y.Stale) - bool2int(x.Stale)
	})
	for _, in := range d.Idents.Idents {
		if in.Connections > 0 {
			d.Connected++
		}
	}
	for _, c := range d.Channels.Channels {
		d.Unheard += bool2int(c.Unheard)
	}
	var buf bytes.Buffer
	if err := page.Execute(&buf, d); err != nil {
		slog.Error("rendering the status page", "err", err)
		return nil
	}
	return buf.Bytes()
}

func bool2int(b bool) int {
	if b {
		return 1
	}
	return 0
}

// ago says how long before now t was, in the largest unit that fits.
func ago(now, t time.Time) string {
	if t.IsZero() {
		return "never"
	}
	d := now.Sub(t)
	switch {
	case d < time.Second:
		return "just now"
	case d < time.Minute:
		return fmt.Sprintf("%ds ago", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm ago", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh%02dm ago", int(d.Hours()), int(d.Minutes())%60)
	}
	return fmt.Sprintf("%dd ago", int(d.Hours()/24))
}

// humanBytes writes n in binary units.
func humanBytes(n uint64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := uint64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
