package broker

import "strings"

// patternTree matches topics against pattern subscriptions ('*' matches one
// segment, '>' one or more trailing segments) by walking a tree of
// segments, so a publish costs the depth of the topic, not the number of
// pattern subscriptions. It is not safe for concurrent use; Server guards it.
type patternTree struct {
	root *patternNode
	n    int
}

type patternNode struct {
	children map[string]*patternNode // literal segments
	star     *patternNode            // '*'
	tail     []*subscription         // '>' at this level
	subs     []*subscription         // patterns ending here
}

func newPatternTree() *patternTree { return &patternTree{root: &patternNode{}} }

func (t *patternTree) insert(pattern string, s *subscription) {
	n := t.root
	for _, seg := range strings.Split(pattern, ".") {
		switch seg {
		case ">":
			n.tail = append(n.tail, s)
			t.n++
			return
		case "*":
			if n.star == nil {
				n.star = &patternNode{}
			}
			n = n.star
		default:
			if n.children == nil {
				n.children = make(map[string]*patternNode)
			}
			c := n.children[seg]
			if c == nil {
				c = &patternNode{}
				n.children[seg] = c
			}
			n = c
		}
	}
	n.subs = append(n.subs, s)
	t.n++
}

// remove deletes s, stored under pattern, and prunes empty nodes.
func (t *patternTree) remove(pattern string, s *subscription) {
	if t.removeAt(t.root, strings.Split(pattern, "."), s) {
		t.n--
	}
}

func (t *patternTree) removeAt(n *patternNode, segs []string, s *subscription) bool {
	if len(segs) == 0 {
		var ok bool
		n.subs, ok = without(n.subs, s)
		return ok
	}
	seg := segs[0]
	switch seg {
	case ">":
		var ok bool
		n.tail, ok = without(n.tail, s)
		return ok
	case "*":
		if n.star == nil {
			return false
		}
		ok := t.removeAt(n.star, segs[1:], s)
		if n.star.empty() {
			n.star = nil
		}
		return ok
	default:
		c := n.children[seg]
		if c == nil {
			return false
		}
		ok := t.removeAt(c, segs[1:], s)
		if c.empty() {
			delete(n.children, seg)
		}
		return ok
	}
}

func (n *patternNode) empty() bool {
	return len(n.children) == 0 && n.star == nil && len(n.tail) == 0 && len(n.subs) == 0
}

func without(list []*subscription, s *subscription) ([]*subscription, bool) {
	for i, x := range list {
		if x == s {
			last := len(list) - 1
			list[i] = list[last]
			list[last] = nil
			return list[:last], true
		}
	}
	return list, false
}

// match appends to dst every subscription whose pattern matches topic.
func (t *patternTree) match(topic string, dst []*subscription) []*subscription {
	if t.n == 0 {
		return dst
	}
	return matchAt(t.root, topic, dst)
}

func matchAt(n *patternNode, rest string, dst []*subscription) []*subscription {
	// rest is never empty: a valid topic has no empty segments.
	seg, tail, more := strings.Cut(rest, ".")
	dst = append(dst, n.tail...)
	if c := n.children[seg]; c != nil {
		if more {
			dst = matchAt(c, tail, dst)
		} else {
			dst = append(dst, c.subs...)
		}
	}
	if n.star != nil {
		if more {
			dst = matchAt(n.star, tail, dst)
		} else {
			dst = append(dst, n.star.subs...)
		}
	}
	return dst
}
