module github.com/brokerd/brokerd/subproto

go 1.26.0
