// Command loadgen is the load benchmark's second, independent load
// generator: the Go standard library's net package (goroutines over Go's
// own netpoller, GOMAXPROCS = the machine's cores), as an external tool
// measuring the proxy would be. It runs the same closed-loop unit as the
// Rust generator's setup part — connect, CONNECT (through a proxy), a
// 64-byte echo checked byte for byte, close — with `-clients` goroutines
// for `-duration`, then prints one JSON line: operations, elapsed time,
// latency quantiles, errors, and its own CPU time (getrusage), so the
// benchmark can tell how much of the machine the generator itself took.
//
// It never reaches anything but the addresses it is given; the benchmark
// gives it only 127.0.x.y addresses. Standard library only: the benchmark
// builds it with `go build` at run time, offline.
package main

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"
)

const echoBytes = 64

type result struct {
	Ops        int     `json:"ops"`
	ElapsedS   float64 `json:"elapsed_s"`
	P50Us      float64 `json:"p50_us"`
	P99Us      float64 `json:"p99_us"`
	Errors     int     `json:"errors"`
	FirstError string  `json:"first_error"`
	CPUS       float64 `json:"cpu_s"`
	Clients    int     `json:"clients"`
}

func main() {
	proxy := flag.String("proxy", "", "CONNECT proxy HOST:PORT (empty: connect to the targets directly)")
	targets := flag.String("targets", "", "comma-separated echo HOST:PORTs; client i uses target i mod n")
	clients := flag.Int("clients", 64, "concurrent clients")
	duration := flag.Duration("duration", 5*time.Second, "how long to run")
	sourceNet := flag.String("source-prefix", "127.0.1.", "client i binds to this prefix + (i mod 250 + 1); empty: any")
	flag.Parse()
	list := strings.Split(*targets, ",")
	if *targets == "" || len(list) == 0 || *clients < 1 {
		fmt.Fprintln(os.Stderr, "loadgen: -targets and -clients >= 1 are required")
		os.Exit(2)
	}

	deadline := time.Now().Add(*duration)
	started := time.Now()
	var mu sync.Mutex
	var all []time.Duration
	errors := 0
	firstError := ""
	var wg sync.WaitGroup
	for c := 0; c < *clients; c++ {
		wg.Add(1)
		go func(c int) {
			defer wg.Done()
			dialer := net.Dialer{Timeout: 10 * time.Second}
			if *sourceNet != "" {
				dialer.LocalAddr = &net.TCPAddr{IP: net.ParseIP(fmt.Sprintf("%s%d", *sourceNet, c%250+1))}
			}
			target := list[c%len(list)]
			samples := make([]time.Duration, 0, 64*1024)
			var message [echoBytes]byte
			op := uint64(0)
			for time.Now().Before(deadline) {
				binary.LittleEndian.PutUint64(message[:8], op)
				message[8] = byte(c)
				began := time.Now()
				if err := once(&dialer, *proxy, target, &message); err != nil {
					mu.Lock()
					errors++
					if firstError == "" {
						firstError = err.Error()
					}
					mu.Unlock()
					// A failing target is not hammered: the error is counted, the client pauses.
					time.Sleep(10 * time.Millisecond)
				} else {
					samples = append(samples, time.Since(began))
				}
				op++
			}
			mu.Lock()
			all = append(all, samples...)
			mu.Unlock()
		}(c)
	}
	wg.Wait()
	elapsed := time.Since(started)
	sort.Slice(all, func(i, j int) bool { return all[i] < all[j] })
	var usage syscall.Rusage
	cpu := 0.0
	if syscall.Getrusage(syscall.RUSAGE_SELF, &usage) == nil {
		cpu = time.Duration(usage.Utime.Nano() + usage.Stime.Nano()).Seconds()
	}
	out := result{
		Ops:        len(all),
		ElapsedS:   elapsed.Seconds(),
		P50Us:      quantileUs(all, 0.5),
		P99Us:      quantileUs(all, 0.99),
		Errors:     errors,
		FirstError: firstError,
		CPUS:       cpu,
		Clients:    *clients,
	}
	line, _ := json.Marshal(out)
	fmt.Println(string(line))
}

// once runs one unit: connect (and CONNECT through the proxy), echo 64 bytes, close.
func once(dialer *net.Dialer, proxy, target string, message *[echoBytes]byte) error {
	to := target
	if proxy != "" {
		to = proxy
	}
	conn, err := dialer.Dial("tcp", to)
	if err != nil {
		return err
	}
	defer conn.Close()
	if err := conn.SetDeadline(time.Now().Add(10 * time.Second)); err != nil {
		return err
	}
	var reader io.Reader = conn
	if proxy != "" {
		if _, err := fmt.Fprintf(conn, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", target, target); err != nil {
			return err
		}
		buffered := bufio.NewReaderSize(conn, 512)
		status, err := buffered.ReadString('\n')
		if err != nil {
			return err
		}
		if !strings.HasPrefix(status, "HTTP/1.1 200 ") {
			return fmt.Errorf("CONNECT refused: %q", status)
		}
		for {
			line, err := buffered.ReadString('\n')
			if err != nil {
				return err
			}
			if line == "\r\n" {
				break
			}
		}
		if buffered.Buffered() != 0 {
			return fmt.Errorf("bytes after the CONNECT response before anything was sent")
		}
		reader = buffered
	}
	if _, err := conn.Write(message[:]); err != nil {
		return err
	}
	var back [echoBytes]byte
	if _, err := io.ReadFull(reader, back[:]); err != nil {
		return err
	}
	if !bytes.Equal(back[:], message[:]) {
		return fmt.Errorf("echo came back different")
	}
	return nil
}

func quantileUs(sorted []time.Duration, q float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	rank := int(q*float64(len(sorted)) + 0.999999)
	if rank < 1 {
		rank = 1
	}
	if rank > len(sorted) {
		rank = len(sorted)
	}
	return float64(sorted[rank-1].Microseconds())
}
