package broker

import (
	"slices"
	"time"
)

// loginQueue holds a throttled source's logins waiting for their check,
// per class (an ident the store knows, or "" for every other), served
// round-robin across classes and in arrival order within one. Guarded by
// throttle.mu.
type loginQueue struct {
	classes map[string][]chan bool
	ring    []string // classes with logins waiting, in serving order
	waiting int
	next    time.Time // when the next check may start
	serving bool      // a serve goroutine runs for the queue
}

// push queues a login of class. Past throttleWaiting it makes room fairly:
// if class has as many waiting as the fullest class, the login is refused
// (w is nil); otherwise the newest login of the fullest class is, and
// evicted is its channel.
func (q *loginQueue) push(class string) (w, evicted chan bool) {
	if q.classes == nil {
		q.classes = map[string][]chan bool{}
	}
	if q.waiting >= throttleWaiting {
		fullest := class
		for c, ws := range q.classes {
			if len(ws) > len(q.classes[fullest]) {
				fullest = c
			}
		}
		if fullest == class {
			return nil, nil
		}
		ws := q.classes[fullest]
		evicted = ws[len(ws)-1]
		if q.classes[fullest] = ws[:len(ws)-1]; len(ws) == 1 {
			delete(q.classes, fullest)
			q.ring = slices.DeleteFunc(q.ring, func(c string) bool { return c == fullest })
		}
		q.waiting--
	}
	w = make(chan bool, 1)
	if len(q.classes[class]) == 0 {
		q.ring = append(q.ring, class)
	}
	q.classes[class] = append(q.classes[class], w)
	q.waiting++
	return w, evicted
}

// pop takes the next login to check, or nil if none waits.
func (q *loginQueue) pop() chan bool {
	if q.waiting == 0 {
		return nil
	}
	class := q.ring[0]
	ws := q.classes[class]
	w := ws[0]
	q.ring = q.ring[1:]
	if len(ws) == 1 {
		delete(q.classes, class)
	} else {
		q.classes[class] = ws[1:]
		q.ring = append(q.ring, class)
	}
	q.waiting--
	return w
}
