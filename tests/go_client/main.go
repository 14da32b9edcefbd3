// A forward client built on fluent-logger-golang (the library behind Docker's `fluentd`
// logging driver). Reads settings from the environment, sends N records, and exits non-zero
// if any Post fails (with RequestAck, a Post returns only after the server's ack).
//
// Built by tests/run with Debian's golang-go and golang-github-fluent-fluent-logger-golang-dev
// (GOPATH mode: no module download).
package main

import (
	"fmt"
	"os"
	"strconv"
	"time"

	"github.com/fluent/fluent-logger-golang/fluent"
)

func env(name string, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

func main() {
	port, _ := strconv.Atoi(env("FLUENT_PORT", "24224"))
	n, _ := strconv.Atoi(env("RECORDS", "10"))
	cfg := fluent.Config{
		FluentHost:         "127.0.0.1",
		FluentPort:         port,
		RequestAck:         env("ACK", "") == "1",
		SubSecondPrecision: env("SUBSECOND", "") == "1",
		MarshalAsJSON:      env("JSON", "") == "1",
		Async:              env("ASYNC", "") == "1",
		Timeout:            10 * time.Second,
		WriteTimeout:       10 * time.Second,
		MaxRetry:           3,
	}
	logger, err := fluent.New(cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, "connect:", err)
		os.Exit(2)
	}
	tag := env("TAG", "go.test")
	t0, _ := strconv.ParseInt(env("T0", "1714566896"), 10, 64)
	base := time.Unix(t0, 123456789).UTC()
	for i := 0; i < n; i++ {
		rec := map[string]interface{}{
			"i":      i,
			"msg":    fmt.Sprintf("hello \"%d\"\n", i),
			"nested": map[string]interface{}{"ok": true, "list": []interface{}{1, "x", nil}},
		}
		if err := logger.PostWithTime(tag, base.Add(time.Duration(i)*time.Second), rec); err != nil {
			fmt.Fprintln(os.Stderr, "post:", err)
			os.Exit(1)
		}
	}
	if err := logger.Close(); err != nil {
		fmt.Fprintln(os.Stderr, "close:", err)
		os.Exit(1)
	}
}
