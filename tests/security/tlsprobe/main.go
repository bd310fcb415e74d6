// Command tlsprobe shows which key-exchange group a TLS peer negotiates, from an implementation that
// is neither BoringSSL nor OpenSSL: Go's crypto/tls offers exactly the groups it is given.
//
// Client: tlsprobe -connect host:port -groups X25519MLKEM768 -cert c.crt -key c.key -ca ca.crt
// prints one JSON object: {"ok":true,"group":"X25519MLKEM768","version":"TLS 1.3",...} or
// {"ok":false,"error":"..."}; it always exits 0 after printing, so the caller judges the result.
// With -grpc /pkg.Service/Method it also makes that gRPC call (an empty request message) over the
// connection and adds the answer's "grpc_status" and "grpc_message".
//
// Server: tlsprobe -listen 127.0.0.1:0 -groups X25519MLKEM768 -cert s.crt -key s.key -ca ca.crt
// serves HTTPS (client certificate required), prints {"listening":"127.0.0.1:port"} and then one JSON
// line per handshake; each response body is the same JSON, so a caller behind a proxy sees it too.
package main

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

var groupsByName = map[string]tls.CurveID{
	"X25519MLKEM768": tls.X25519MLKEM768,
	"X25519":         tls.X25519,
	"P-256":          tls.CurveP256,
	"P-384":          tls.CurveP384,
	"P-521":          tls.CurveP521,
}

type report struct {
	OK      bool   `json:"ok"`
	Group   string `json:"group,omitempty"`
	Version string `json:"version,omitempty"`
	Cipher  string `json:"cipher,omitempty"`
	ALPN    string `json:"alpn,omitempty"`
	Peer    string `json:"peer,omitempty"`
	Error   string `json:"error,omitempty"`
	// Only with -grpc: the call's status code (a number, as on the wire) and message.
	GrpcStatus  *int   `json:"grpc_status,omitempty"`
	GrpcMessage string `json:"grpc_message,omitempty"`
}

var out sync.Mutex

func emit(v any) {
	out.Lock()
	defer out.Unlock()
	line, _ := json.Marshal(v)
	fmt.Println(string(line))
}

func fail(format string, args ...any) {
	emit(report{Error: fmt.Sprintf(format, args...)})
	os.Exit(2)
}

func describe(state tls.ConnectionState) report {
	r := report{
		OK:      true,
		Group:   groupName(state.CurveID),
		Version: tls.VersionName(state.Version),
		Cipher:  tls.CipherSuiteName(state.CipherSuite),
		ALPN:    state.NegotiatedProtocol,
	}
	if len(state.PeerCertificates) > 0 {
		for _, uri := range state.PeerCertificates[0].URIs {
			r.Peer = uri.String()
		}
	}
	return r
}

// groupName is the IANA/BoringSSL spelling ("P-256"), which Go's CurveID.String does not use.
func groupName(id tls.CurveID) string {
	for name, known := range groupsByName {
		if known == id {
			return name
		}
	}
	return id.String()
}

func parseGroups(list string) []tls.CurveID {
	var ids []tls.CurveID
	for _, name := range strings.Split(list, ",") {
		id, ok := groupsByName[strings.TrimSpace(name)]
		if !ok {
			fail("unknown group %q (known: X25519MLKEM768, X25519, P-256, P-384, P-521)", name)
		}
		ids = append(ids, id)
	}
	return ids
}

func main() {
	connect := flag.String("connect", "", "host:port to handshake with (client mode)")
	listen := flag.String("listen", "", "host:port to serve HTTPS on (server mode)")
	groups := flag.String("groups", "X25519MLKEM768", "comma-separated key-exchange groups, the only ones offered")
	certFile := flag.String("cert", "", "certificate (PEM) presented to the peer")
	keyFile := flag.String("key", "", "private key (PEM) of -cert")
	caFile := flag.String("ca", "", "CA bundle (PEM) the peer's certificate must chain to")
	serverName := flag.String("servername", "localhost", "SNI and the name the server certificate must carry")
	alpn := flag.String("alpn", "h2", "comma-separated ALPN protocols offered (client mode)")
	timeout := flag.Duration("timeout", 5*time.Second, "handshake deadline")
	grpcMethod := flag.String("grpc", "", "full gRPC method to call after the handshake (client mode)")
	flag.Parse()

	config := &tls.Config{CurvePreferences: parseGroups(*groups), MinVersion: tls.VersionTLS12}
	if *caFile != "" {
		pem, err := os.ReadFile(*caFile)
		if err != nil {
			fail("cannot read CA bundle: %v", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			fail("%s holds no PEM certificate", *caFile)
		}
		config.RootCAs, config.ClientCAs = pool, pool
	}
	if *certFile != "" {
		pair, err := tls.LoadX509KeyPair(*certFile, *keyFile)
		if err != nil {
			fail("cannot load certificate: %v", err)
		}
		config.Certificates = []tls.Certificate{pair}
	}

	switch {
	case *connect != "":
		config.ServerName = *serverName
		if *alpn != "" {
			config.NextProtos = strings.Split(*alpn, ",")
		}
		if *grpcMethod != "" {
			emit(callGrpc(*connect, *grpcMethod, config, *timeout))
			return
		}
		dialer := &net.Dialer{Timeout: *timeout}
		conn, err := tls.DialWithDialer(dialer, "tcp", *connect, config)
		if err != nil {
			emit(report{Error: err.Error()})
			return
		}
		defer conn.Close()
		emit(describe(conn.ConnectionState()))
	case *listen != "":
		config.ClientAuth = tls.RequireAndVerifyClientCert
		config.NextProtos = []string{"http/1.1"}
		ln, err := tls.Listen("tcp", *listen, config)
		if err != nil {
			fail("cannot listen: %v", err)
		}
		emit(map[string]string{"listening": ln.Addr().String()})
		server := &http.Server{
			Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				body, _ := json.Marshal(describe(*r.TLS))
				w.Header().Set("content-type", "application/json")
				w.Write(body)
			}),
			ConnState: func(c net.Conn, state http.ConnState) {
				if state == http.StateActive {
					if t, ok := c.(*tls.Conn); ok {
						emit(describe(t.ConnectionState()))
					}
				}
			},
			ErrorLog:          nil,
			ReadHeaderTimeout: *timeout,
		}
		server.Serve(ln)
	default:
		fail("give -connect or -listen")
	}
}

// callGrpc sends one gRPC call with an empty request message over HTTP/2 and reports the handshake
// and the call's status, which comes in the trailers (or in the headers of a trailers-only answer).
func callGrpc(address, method string, config *tls.Config, timeout time.Duration) report {
	config.NextProtos = []string{"h2"}
	client := &http.Client{
		Timeout:   timeout,
		Transport: &http.Transport{TLSClientConfig: config, ForceAttemptHTTP2: true},
	}
	request, err := http.NewRequest(http.MethodPost, "https://"+address+method, bytes.NewReader(make([]byte, 5)))
	if err != nil {
		return report{Error: err.Error()}
	}
	request.Header.Set("content-type", "application/grpc")
	request.Header.Set("te", "trailers")
	response, err := client.Do(request)
	if err != nil {
		return report{Error: err.Error()}
	}
	defer response.Body.Close()
	io.Copy(io.Discard, response.Body)
	r := describe(*response.TLS)
	status := response.Trailer.Get("grpc-status")
	message := response.Trailer.Get("grpc-message")
	if status == "" {
		status, message = response.Header.Get("grpc-status"), response.Header.Get("grpc-message")
	}
	if code, err := strconv.Atoi(status); err == nil {
		r.GrpcStatus = &code
	} else {
		r.Error = fmt.Sprintf("no grpc-status in the answer (HTTP %d)", response.StatusCode)
	}
	if decoded, err := url.PathUnescape(message); err == nil {
		message = decoded
	}
	r.GrpcMessage = message
	return r
}
