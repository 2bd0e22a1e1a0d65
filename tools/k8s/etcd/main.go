// Command etcd is the upstream etcd server (3.6.x), built from its Go module: the test control
// plane needs an etcd as new as the kube-apiserver expects, and Debian's is too old.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
