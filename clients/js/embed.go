// Package jsclient embeds brokerd's JavaScript client, the ES modules of
// the npm package @brokerd/client, so that the daemon can serve them to
// browsers (the console page imports them from there).
package jsclient

import (
	"embed"
	"io/fs"
)

//go:embed src/*.js
var files embed.FS

// FS holds the client's ES modules at its root: index.js and the modules
// it imports. Browsers load index.js; every import inside is relative.
var FS fs.FS = mustSub(files, "src")

func mustSub(f fs.FS, dir string) fs.FS {
	sub, err := fs.Sub(f, dir)
	if err != nil {
		panic(err) // dir is a constant that go:embed has checked
	}
	return sub
}
