// Command etcd is the etcd server, built from go.etcd.io/etcd/server/v3 so the
// control plane used by Aviator's tests comes from the Go module proxy alone.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
