// Package clienttest_test runs the Go client (module
// github.com/brokerd/brokerd/clients/go) against a brokerd in the process:
// the client's own module does not include the server, so the tests that
// need one live here, in the server's module, which builds the client from
// the copy in this repository (see the replace in go.mod).
package clienttest_test
