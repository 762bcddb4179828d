// loadgen: a closed-loop HTTP load generator for the serving benchmark.
//
// C workers send N requests in all (POST, bodies rotated from a file of one body per line) over
// keep-alive connections and record each latency. It prints one JSON object: requests/s, latency
// percentiles, errors, and the CPU this process used, so the benchmark can show that the load
// generator is not the bottleneck. `-selftest` serves a constant from an in-process Go server instead,
// which gives the generator's own ceiling on this machine.
//
// `-rate R -duration S` is the open-loop mode (the soak and burst cells): requests are started at R per
// second for S seconds whatever the server's answers (at most -c in flight; a request that would exceed it is
// counted as not sent), and the result adds a timeline: per bucket of -bucket-ms (by the time a request was
// started) how many were sent, answered 200, refused with 503, or failed otherwise, and the 200s' latency.
// `-schedule R1:S1,R2:S2,...` runs several rates back to back in one timeline (a burst, then normal load).
// `-preconnect K` dials K TCP connections before the first request and hands them to the HTTP client as it
// needs new ones: a client fleet with warm connection pools. Without it an open-loop burst opens hundreds of
// connections in the same instant, the listen queue overflows and the dropped handshakes are retried by the
// kernel 1, 3, 7 and 15 s later (measured: p99 15.5 s, 110,478 of 134,000 requests never sent, and the
// server never saw the overload): a connection storm, not the request overload the burst cell is about.
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	neturl "net/url"
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

type bucket struct {
	T       float64 `json:"t"` // seconds from the start of the run
	Sent    int     `json:"sent"`
	OK      int     `json:"ok"`
	Refused int     `json:"refused"` // HTTP 503
	Errors  int     `json:"errors"`  // anything else
	P50Ms   float64 `json:"p50_ms"`
	P99Ms   float64 `json:"p99_ms"`
}

type openResult struct {
	Rate         float64  `json:"rate"`
	Duration     float64  `json:"duration_s"`
	Sent         int      `json:"sent"`
	NotSent      int      `json:"not_sent"` // the generator's in-flight bound was reached
	OK           int      `json:"ok"`
	Refused      int      `json:"refused"`
	Errors       int      `json:"errors"`
	FirstError   string   `json:"first_error,omitempty"`
	RetryAfter   string   `json:"retry_after,omitempty"` // of the first 503
	Seconds      float64  `json:"seconds"`
	OKPerSecond  float64  `json:"ok_rps"`
	P50Ms        float64  `json:"p50_ms"`
	P99Ms        float64  `json:"p99_ms"`
	RefusedP99Ms float64  `json:"refused_p99_ms"`
	CPUSeconds   float64  `json:"loadgen_cpu_seconds"`
	CPUShare     float64  `json:"loadgen_cpu_share"`
	Timeline     []bucket `json:"timeline"`
}

type phase struct{ rate, seconds float64 }

func parseSchedule(text string) ([]phase, error) {
	var out []phase
	for _, part := range strings.Split(text, ",") {
		var p phase
		if _, err := fmt.Sscanf(strings.TrimSpace(part), "%g:%g", &p.rate, &p.seconds); err != nil || p.rate <= 0 {
			return nil, fmt.Errorf("bad schedule part %q (want RATE:SECONDS)", part)
		}
		out = append(out, p)
	}
	return out, nil
}

func openLoop(client *http.Client, url string, bodies [][]byte, headers http.Header, phases []phase,
	c int, bucketMs int) openResult {
	var due []float64 // start offsets, seconds
	var duration, rate float64
	for _, p := range phases {
		n := int(p.rate * p.seconds)
		for k := 0; k < n; k++ {
			due = append(due, duration+float64(k)/p.rate)
		}
		duration += p.seconds
	}
	rate = float64(len(due)) / duration
	total := len(due)
	type rec struct {
		start  float64
		ms     float64
		status int // 0: transport error
	}
	recs := make([]rec, total)
	sent := make([]bool, total)
	var firstErr, retryAfter atomic.Value
	sem := make(chan struct{}, c)
	var wg sync.WaitGroup
	start := time.Now()
	cpu0 := cpuSeconds()
	for i := 0; i < total; i++ {
		at := start.Add(time.Duration(due[i] * float64(time.Second)))
		if d := time.Until(at); d > 0 {
			time.Sleep(d)
		}
		select {
		case sem <- struct{}{}:
		default:
			continue // not sent: the in-flight bound
		}
		sent[i] = true
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			defer func() { <-sem }()
			req, _ := http.NewRequest(http.MethodPost, url, bytes.NewReader(bodies[i%len(bodies)]))
			req.Header = headers.Clone()
			t := time.Now()
			status := 0
			resp, err := client.Do(req)
			if err == nil {
				_, err = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if err == nil {
					status = resp.StatusCode
					if status == http.StatusServiceUnavailable {
						retryAfter.CompareAndSwap(nil, resp.Header.Get("Retry-After")+" ")
					} else if status != http.StatusOK {
						firstErr.CompareAndSwap(nil, fmt.Sprintf("HTTP %d", status))
					}
				}
			}
			if err != nil {
				firstErr.CompareAndSwap(nil, err.Error())
			}
			recs[i] = rec{t.Sub(start).Seconds(), float64(time.Since(t).Microseconds()) / 1000, status}
		}(i)
	}
	wg.Wait()
	wall := time.Since(start).Seconds()
	cpu := cpuSeconds() - cpu0
	width := float64(bucketMs) / 1000
	nb := int(duration/width) + 1
	buckets := make([]bucket, nb)
	lats := make([][]float64, nb)
	r := openResult{Rate: rate, Duration: duration, Seconds: wall, CPUSeconds: cpu, CPUShare: cpu / wall}
	var okLat, refusedLat []float64
	for i, x := range recs {
		if !sent[i] {
			r.NotSent++
			continue
		}
		r.Sent++
		b := int(x.start / width)
		if b >= nb {
			b = nb - 1
		}
		buckets[b].Sent++
		switch x.status {
		case http.StatusOK:
			r.OK++
			buckets[b].OK++
			okLat = append(okLat, x.ms)
			lats[b] = append(lats[b], x.ms)
		case http.StatusServiceUnavailable:
			r.Refused++
			buckets[b].Refused++
			refusedLat = append(refusedLat, x.ms)
		default:
			r.Errors++
			buckets[b].Errors++
		}
	}
	for b := range buckets {
		buckets[b].T = float64(b) * width
		sort.Float64s(lats[b])
		buckets[b].P50Ms, buckets[b].P99Ms = percentile(lats[b], 0.50), percentile(lats[b], 0.99)
	}
	sort.Float64s(okLat)
	sort.Float64s(refusedLat)
	r.OKPerSecond = float64(r.OK) / wall
	r.P50Ms, r.P99Ms, r.RefusedP99Ms = percentile(okLat, 0.50), percentile(okLat, 0.99), percentile(refusedLat, 0.99)
	r.Timeline = buckets
	if e := firstErr.Load(); e != nil {
		r.FirstError = e.(string)
	}
	if e := retryAfter.Load(); e != nil {
		r.RetryAfter = strings.TrimSpace(e.(string))
	}
	return r
}

// dialAhead opens k TCP connections to the host of rawURL, 64 at a time (no burst of handshakes).
func dialAhead(rawURL string, k int) (chan net.Conn, error) {
	u, err := neturl.Parse(rawURL)
	if err != nil {
		return nil, err
	}
	pool := make(chan net.Conn, k)
	for done := 0; done < k; {
		wave := min(64, k-done)
		errs := make(chan error, wave)
		for j := 0; j < wave; j++ {
			go func() {
				conn, err := net.DialTimeout("tcp", u.Host, 5*time.Second)
				if err == nil {
					pool <- conn
				}
				errs <- err
			}()
		}
		for j := 0; j < wave; j++ {
			if err := <-errs; err != nil {
				return nil, fmt.Errorf("preconnect: %w", err)
			}
		}
		done += wave
	}
	return pool, nil
}

func main() {
	url := flag.String("url", "", "POST target")
	bodiesPath := flag.String("bodies", "", "file with one request body per line")
	n := flag.Int("n", 2000, "requests in all")
	c := flag.Int("c", 8, "concurrent connections")
	warmup := flag.Int("warmup", 200, "requests sent first and not measured")
	selftest := flag.Bool("selftest", false, "measure against an in-process constant server (the generator's ceiling)")
	rate := flag.Float64("rate", 0, "open loop: requests started per second (0: closed loop over -c connections)")
	duration := flag.Float64("duration", 10, "open loop: seconds")
	bucketMs := flag.Int("bucket-ms", 100, "open loop: timeline bucket width")
	schedule := flag.String("schedule", "", "open loop: RATE:SECONDS,... run back to back (instead of -rate/-duration)")
	preconnect := flag.Int("preconnect", 0, "TCP connections dialled before the first request, used before new dials")
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
	transport := &http.Transport{MaxIdleConns: *c * 2, MaxIdleConnsPerHost: *c * 2, DisableCompression: true}
	if *preconnect > 0 {
		pool, err := dialAhead(*url, *preconnect)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		var dialer net.Dialer
		transport.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
			select {
			case conn := <-pool:
				return conn, nil
			default:
				return dialer.DialContext(ctx, network, addr)
			}
		}
	}
	client := &http.Client{Timeout: 60 * time.Second, Transport: transport}
	if *warmup > 0 {
		run(client, *url, bodies, headers, *warmup, *c)
	}
	if *rate > 0 || *schedule != "" {
		phases := []phase{{*rate, *duration}}
		if *schedule != "" {
			var err error
			if phases, err = parseSchedule(*schedule); err != nil {
				fmt.Fprintln(os.Stderr, err)
				os.Exit(2)
			}
		}
		out, _ := json.Marshal(openLoop(client, *url, bodies, headers, phases, *c, *bucketMs))
		fmt.Println(string(out))
		return
	}
	r := run(client, *url, bodies, headers, *n, *c)
	out, _ := json.Marshal(r)
	fmt.Println(string(out))
}
