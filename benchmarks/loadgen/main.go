// loadgen: a closed-loop HTTP load generator for the serving benchmark.
//
// C workers send N requests in all (POST, bodies rotated from a file of one body per line) over
// keep-alive connections and record each latency. It prints one JSON object: requests/s, latency
// percentiles, errors, and the CPU this process used, so the benchmark can show that the load
// generator is not the bottleneck. `-selftest` serves a constant from an in-process Go server instead,
// which gives the generator's own ceiling on this machine.
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

type headerList []string

func (h *headerList) String() string     { return strings.Join(*h, ", ") }
func (h *headerList) Set(v string) error { *h = append(*h, v); return nil }

type result struct {
	Requests    int     `json:"requests"`
	Concurrency int     `json:"concurrency"`
	Errors      int     `json:"errors"`
	FirstError  string  `json:"first_error,omitempty"`
	Seconds     float64 `json:"seconds"`
	RPS         float64 `json:"rps"`
	P50Ms       float64 `json:"p50_ms"`
	P90Ms       float64 `json:"p90_ms"`
	P99Ms       float64 `json:"p99_ms"`
	MaxMs       float64 `json:"max_ms"`
	MeanMs      float64 `json:"mean_ms"`
	CPUSeconds  float64 `json:"loadgen_cpu_seconds"`
	CPUShare    float64 `json:"loadgen_cpu_share"` // CPU seconds per wall second (1.0 = one core)
}

func cpuSeconds() float64 {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	tv := func(t syscall.Timeval) float64 { return float64(t.Sec) + float64(t.Usec)/1e6 }
	return tv(ru.Utime) + tv(ru.Stime)
}

func readBodies(path string) ([][]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out [][]byte
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 64<<20)
	for sc.Scan() {
		if line := bytes.TrimSpace(sc.Bytes()); len(line) > 0 {
			out = append(out, append([]byte(nil), line...))
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s: no bodies", path)
	}
	return out, sc.Err()
}

func percentile(sorted []float64, p float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := int(p*float64(len(sorted))+0.5) - 1
	if i < 0 {
		i = 0
	}
	if i >= len(sorted) {
		i = len(sorted) - 1
	}
	return sorted[i]
}

func run(client *http.Client, url string, bodies [][]byte, headers http.Header, n, c int) result {
	var next int64 = -1
	lat := make([]float64, n)
	ok := make([]bool, n)
	var firstErr atomic.Value
	var wg sync.WaitGroup
	start := time.Now()
	cpu0 := cpuSeconds()
	for w := 0; w < c; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(atomic.AddInt64(&next, 1))
				if i >= n {
					return
				}
				req, _ := http.NewRequest(http.MethodPost, url, bytes.NewReader(bodies[i%len(bodies)]))
				req.Header = headers.Clone()
				t := time.Now()
				resp, err := client.Do(req)
				if err == nil {
					_, err = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if err == nil && resp.StatusCode != http.StatusOK {
						err = fmt.Errorf("HTTP %d", resp.StatusCode)
					}
				}
				lat[i] = float64(time.Since(t).Microseconds()) / 1000
				ok[i] = err == nil
				if err != nil {
					firstErr.CompareAndSwap(nil, err.Error())
				}
			}
		}()
	}
	wg.Wait()
	wall := time.Since(start).Seconds()
	cpu := cpuSeconds() - cpu0
	var good []float64
	var sum float64
	for i, l := range lat {
		if ok[i] {
			good = append(good, l)
			sum += l
		}
	}
	sort.Float64s(good)
	r := result{Requests: n, Concurrency: c, Errors: n - len(good), Seconds: wall, RPS: float64(len(good)) / wall,
		P50Ms: percentile(good, 0.50), P90Ms: percentile(good, 0.90), P99Ms: percentile(good, 0.99),
		CPUSeconds: cpu, CPUShare: cpu / wall}
	if len(good) > 0 {
		r.MaxMs, r.MeanMs = good[len(good)-1], sum/float64(len(good))
	}
	if e := firstErr.Load(); e != nil {
		r.FirstError = e.(string)
	}
	return r
}

func main() {
	url := flag.String("url", "", "POST target")
	bodiesPath := flag.String("bodies", "", "file with one request body per line")
	n := flag.Int("n", 2000, "requests in all")
	c := flag.Int("c", 8, "concurrent connections")
	warmup := flag.Int("warmup", 200, "requests sent first and not measured")
	selftest := flag.Bool("selftest", false, "measure against an in-process constant server (the generator's ceiling)")
	var hdrs headerList
	flag.Var(&hdrs, "H", "request header 'Name: value' (repeatable)")
	flag.Parse()

	bodies := [][]byte{[]byte(`{}`)}
	if *bodiesPath != "" {
		var err error
		if bodies, err = readBodies(*bodiesPath); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
	}
	if *selftest {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		payload := []byte(`{"model_name":"m","outputs":[{"name":"score","datatype":"FP32","shape":[1],"data":[0.5]}]}`)
		go http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			_, _ = io.Copy(io.Discard, r.Body)
			w.Header().Set("Content-Type", "application/json")
			_, _ = w.Write(payload)
		}))
		*url = "http://" + ln.Addr().String() + "/v2/models/m/infer"
	}
	if *url == "" {
		fmt.Fprintln(os.Stderr, "need -url or -selftest")
		os.Exit(2)
	}
	headers := http.Header{"Content-Type": {"application/json"}}
	for _, h := range hdrs {
		k, v, found := strings.Cut(h, ":")
		if !found {
			fmt.Fprintf(os.Stderr, "bad header %q\n", h)
			os.Exit(2)
		}
		headers.Set(strings.TrimSpace(k), strings.TrimSpace(v))
	}
	client := &http.Client{
		Timeout:   60 * time.Second,
		Transport: &http.Transport{MaxIdleConns: *c * 2, MaxIdleConnsPerHost: *c * 2, DisableCompression: true},
	}
	if *warmup > 0 {
		run(client, *url, bodies, headers, *warmup, *c)
	}
	r := run(client, *url, bodies, headers, *n, *c)
	out, _ := json.Marshal(r)
	fmt.Println(string(out))
}
