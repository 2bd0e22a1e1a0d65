// Command kube-apiserver is the upstream kube-apiserver, built from k8s.io/kubernetes as a module
// dependency so the test control plane needs no binary download.
package main

import (
	"os"
	_ "time/tzdata" // zone data for components that read time zones (CronJob)

	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"          // JSON log format, as upstream registers it
	_ "k8s.io/component-base/metrics/prometheus/clientgo" // client-go metrics, as upstream
	_ "k8s.io/component-base/metrics/prometheus/version"  // version metric, as upstream
	"k8s.io/kubernetes/cmd/kube-apiserver/app"
)

func main() {
	os.Exit(cli.Run(app.NewAPIServerCommand()))
}
