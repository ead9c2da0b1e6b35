// The real-client suite's Go net/http client (tests/e2e/clients.rs).
//
// Usage: client PROXY_URL TARGET_URL CA_FILE [USER PASSWORD]
// Prints `status=CODE body=FIRST-LINE` when the origin answered, else
// `error=...`; exits 0 only for the origin. Credentials: in the proxy URL
// (http.Transport sends them with the CONNECT).
package main

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"
)

func main() {
	if len(os.Args) < 4 {
		fmt.Println("error=usage: client PROXY_URL TARGET_URL CA_FILE [USER PASSWORD]")
		os.Exit(2)
	}
	proxy, err := url.Parse(os.Args[1])
	if err != nil {
		fmt.Printf("error=proxy URL: %v\n", err)
		os.Exit(2)
	}
	if len(os.Args) > 5 {
		proxy.User = url.UserPassword(os.Args[4], os.Args[5])
	}
	pem, err := os.ReadFile(os.Args[3])
	if err != nil {
		fmt.Printf("error=CA file: %v\n", err)
		os.Exit(2)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(pem) {
		fmt.Println("error=CA file: no certificate")
		os.Exit(2)
	}
	client := &http.Client{
		Timeout: 15 * time.Second,
		Transport: &http.Transport{
			Proxy:           http.ProxyURL(proxy),
			TLSClientConfig: &tls.Config{RootCAs: roots},
		},
	}
	response, err := client.Get(os.Args[2])
	if err != nil {
		fmt.Printf("error=%v\n", err)
		os.Exit(1)
	}
	defer response.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(response.Body, 1<<16))
	fmt.Printf("status=%d body=%s\n", response.StatusCode, strings.SplitN(string(body), "\n", 2)[0])
}
