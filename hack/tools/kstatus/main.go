// kstatus prints what sigs.k8s.io/cli-utils' kstatus (the library Flux, kpt and
// cli-utils' apply use) computes for each object of a JSON list read from stdin:
// one JSON object per line, {"status": ..., "message": ...}. The tests feed it
// AviatorPolicies the controller wrote.
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utiljson "k8s.io/apimachinery/pkg/util/json"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

func main() {
	data, err := io.ReadAll(os.Stdin)
	if err != nil {
		fmt.Fprintln(os.Stderr, "kstatus:", err)
		os.Exit(2)
	}
	// The apimachinery decoder keeps integers int64, as unstructured objects need.
	var objects []interface{}
	if err := utiljson.Unmarshal(data, &objects); err != nil {
		fmt.Fprintln(os.Stderr, "kstatus: reading a JSON list of objects:", err)
		os.Exit(2)
	}
	out := bufio.NewWriter(os.Stdout)
	defer out.Flush()
	for _, item := range objects {
		obj, ok := item.(map[string]interface{})
		if !ok {
			fmt.Fprintln(os.Stderr, "kstatus: not an object:", item)
			os.Exit(2)
		}
		res, err := status.Compute(&unstructured.Unstructured{Object: obj})
		if err != nil {
			fmt.Fprintln(os.Stderr, "kstatus:", err)
			os.Exit(1)
		}
		line, _ := json.Marshal(map[string]string{"status": string(res.Status), "message": res.Message})
		fmt.Fprintln(out, string(line))
	}
}
