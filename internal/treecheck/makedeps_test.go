package treecheck

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// fakeApt runs `make deps` with nothing on PATH but an apt-get that logs
// its arguments (and answers a simulation with simulated), and sed. It
// returns make's output, its error and apt-get's log, one call a line.
func fakeApt(t *testing.T, simulated string) (string, error, []string) {
	t.Helper()
	mk, err := exec.LookPath("make")
	if err != nil {
		t.Fatal("make deps needs make:", err)
	}
	sed, err := exec.LookPath("sed")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	bin, log := filepath.Join(dir, "bin"), filepath.Join(dir, "apt.log")
	os.Mkdir(bin, 0o755)
	os.Symlink(sed, filepath.Join(bin, "sed"))
	script := "#!/bin/sh\necho \"$*\" >>" + log + "\ncase \" $* \" in *\" -s \"*) printf '%s' '" + simulated + "' ;; esac\n"
	if err := os.WriteFile(filepath.Join(bin, "apt-get"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(mk, "--no-print-directory", "-C", root, "deps")
	cmd.Env = []string{"PATH=" + bin}
	out, err := cmd.CombinedOutput()
	data, _ := os.ReadFile(log)
	return string(out), err, strings.Split(strings.TrimSpace(string(data)), "\n")
}

// make deps installs what is missing without recommended packages, and
// refuses to upgrade an installed one: chromium's recommends once upgraded
// systemd, libsystemd0 and libudev1 and added udev and avahi-daemon.
func TestMakeDepsNeverUpgrades(t *testing.T) {
	out, err, calls := fakeApt(t, "Inst libfoo1 (1.0 Debian:12 [amd64])\n")
	if err != nil {
		t.Fatalf("make deps: %v\n%s", err, out)
	}
	var installed []string
	for _, c := range calls {
		f := strings.Fields(c)
		if len(f) == 0 || f[0] != "install" {
			continue
		}
		if !strings.Contains(" "+c+" ", " --no-upgrade ") || !strings.Contains(" "+c+" ", " --no-install-recommends ") {
			t.Errorf("apt-get %s: want --no-upgrade --no-install-recommends", c)
		}
		if !strings.Contains(" "+c+" ", " -s ") {
			installed = append(installed, f[len(f)-1])
		}
	}
	want := "sqlite3 postgresql-client mariadb-client nats-server systemd chromium"
	if got := strings.Join(installed, " "); got != want {
		t.Errorf("installed %q, want %q", got, want)
	}

	out, err, calls = fakeApt(t, "Inst libudev1 [252.38-1~deb12u1] (252.39-1~deb12u2 Debian:12.15/oldstable [amd64])\n")
	if err == nil || !strings.Contains(out, "installing sqlite3 would upgrade libudev1") {
		t.Errorf("an upgrade went ahead: %v\n%s", err, out)
	}
	for _, c := range calls {
		if strings.HasPrefix(c, "install") && !strings.Contains(" "+c+" ", " -s ") {
			t.Errorf("apt-get %s ran, though it upgrades libudev1", c)
		}
	}
}
