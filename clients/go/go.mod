module github.com/brokerd/brokerd/clients/go

go 1.26.0

require (
	github.com/brokerd/brokerd/subproto v0.0.0-00010101000000-000000000000
	github.com/google/uuid v1.6.0
	github.com/lxzan/gws v1.8.9
)

require (
	github.com/dolthub/maphash v0.1.0 // indirect
	github.com/klauspost/compress v1.20.3 // indirect
)

// Inside this repository the client is built against the protocol package
// next to it. A release tags subproto/vX.Y.Z first and requires that
// version here (see README, "Go client").
replace github.com/brokerd/brokerd/subproto => ../../subproto
