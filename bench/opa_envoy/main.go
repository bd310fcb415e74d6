// Command opa-envoy is the OPA-Envoy plugin's design in a few lines, for ztmesh's gateway benchmark:
// an Envoy ext_authz v3 gRPC server (mTLS) that turns each CheckRequest into OPA input the way
// opa-envoy-plugin does (protojson of the request plus parsed_path, parsed_query and version), evaluates
// one PreparedEvalQuery of a Rego policy against an in-memory store inside a read transaction, and maps
// the result ({allowed, headers, http_status, body}) back to a CheckResponse.
//
// The plugin itself is not served by the Go module proxy here, so this stands in for it with the same
// OPA (github.com/open-policy-agent/opa v1.22.2) and the same go-control-plane types.
package main

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/rego"
	"github.com/open-policy-agent/opa/v1/storage"
	"github.com/open-policy-agent/opa/v1/storage/inmem"
	"github.com/open-policy-agent/opa/v1/util"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/protobuf/encoding/protojson"
)

type server struct {
	authv3.UnimplementedAuthorizationServer
	query rego.PreparedEvalQuery
	store storage.Store
	dump  string // write the first input here (to profile the policy with `opa eval --profile`)
	once  sync.Once
}

// input is opa-envoy-plugin's envoyauth.RequestToInput for a v3 request without a body.
func input(req *authv3.CheckRequest) (map[string]interface{}, error) {
	bs, err := protojson.Marshal(req)
	if err != nil {
		return nil, err
	}
	var in map[string]interface{}
	if err := util.UnmarshalJSON(bs, &in); err != nil {
		return nil, err
	}
	rawPath := req.GetAttributes().GetRequest().GetHttp().GetPath()
	parsed, err := url.ParseRequestURI(rawPath)
	if err != nil {
		return nil, err
	}
	segments := []interface{}{}
	for _, s := range strings.Split(strings.TrimLeft(parsed.Path, "/"), "/") {
		segments = append(segments, s)
	}
	query := map[string]interface{}{}
	for k, vs := range parsed.Query() {
		list := make([]interface{}, len(vs))
		for i, v := range vs {
			list[i] = v
		}
		query[k] = list
	}
	in["parsed_path"] = segments
	in["parsed_query"] = query
	in["parsed_body"] = nil
	in["truncated_body"] = false
	in["version"] = map[string]interface{}{"ext_authz": "v3", "encoding": "protojson"}
	return in, nil
}

func decisionID() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
}

func header(k, v string) *corev3.HeaderValueOption {
	return &corev3.HeaderValueOption{
		Header:       &corev3.HeaderValue{Key: k, Value: v},
		AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD,
	}
}

func denied(code int32, body string, headers []*corev3.HeaderValueOption) *authv3.CheckResponse {
	return &authv3.CheckResponse{
		Status: &rpcstatus.Status{Code: int32(codes.PermissionDenied)},
		HttpResponse: &authv3.CheckResponse_DeniedResponse{DeniedResponse: &authv3.DeniedHttpResponse{
			Status: &typev3.HttpStatus{Code: typev3.StatusCode(code)}, Headers: headers, Body: body,
		}},
	}
}

func (s *server) Check(ctx context.Context, req *authv3.CheckRequest) (*authv3.CheckResponse, error) {
	id := decisionID()
	in, err := input(req)
	if err != nil {
		return denied(403, fmt.Sprintf(`{"reason": %q}`, err.Error()), nil), nil
	}
	if s.dump != "" {
		s.once.Do(func() {
			if bs, err := json.Marshal(in); err == nil {
				_ = os.WriteFile(s.dump, bs, 0o600)
			}
		})
	}
	value, err := ast.InterfaceToValue(in)
	if err != nil {
		return denied(403, fmt.Sprintf(`{"reason": %q}`, err.Error()), nil), nil
	}
	txn, err := s.store.NewTransaction(ctx)
	if err != nil {
		return nil, err
	}
	defer s.store.Abort(ctx, txn)
	rs, err := s.query.Eval(ctx, rego.EvalParsedInput(value), rego.EvalTransaction(txn))
	if err != nil || len(rs) == 0 || len(rs[0].Expressions) == 0 {
		return denied(403, `{"reason": "policy error or undefined decision"}`, nil), nil // fail closed
	}
	result, ok := rs[0].Expressions[0].Value.(map[string]interface{})
	if !ok {
		return denied(403, `{"reason": "decision is not an object"}`, nil), nil
	}
	headers := []*corev3.HeaderValueOption{header("x-ztmesh-decision-id", id)}
	if hs, ok := result["headers"].(map[string]interface{}); ok {
		for k, v := range hs {
			headers = append(headers, header(k, fmt.Sprint(v)))
		}
	}
	if allowed, _ := result["allowed"].(bool); allowed {
		return &authv3.CheckResponse{
			Status:       &rpcstatus.Status{Code: int32(codes.OK)},
			HttpResponse: &authv3.CheckResponse_OkResponse{OkResponse: &authv3.OkHttpResponse{Headers: headers}},
		}, nil
	}
	status := int32(403)
	if n, ok := result["http_status"].(json.Number); ok {
		if v, err := n.Int64(); err == nil {
			status = int32(v)
		}
	}
	body, _ := result["body"].(string)
	return denied(status, body, headers), nil
}

func readLines(path string) []interface{} {
	raw, err := os.ReadFile(path)
	if err != nil {
		log.Fatal(err)
	}
	out := []interface{}{}
	for _, line := range strings.Split(string(raw), "\n") {
		if entry := strings.TrimSpace(strings.SplitN(line, "#", 2)[0]); entry != "" {
			if !strings.Contains(entry, "/") {
				if strings.Contains(entry, ":") {
					entry += "/128"
				} else {
					entry += "/32"
				}
			}
			out = append(out, entry)
		}
	}
	return out
}

func readJSON(path string) map[string]interface{} {
	raw, err := os.ReadFile(path)
	if err != nil {
		log.Fatal(err)
	}
	var v map[string]interface{}
	if err := util.UnmarshalJSON(raw, &v); err != nil {
		log.Fatalf("%s: %v", path, err)
	}
	return v
}

func main() {
	addr := flag.String("addr", "127.0.0.1:9191", "listen address")
	policy := flag.String("policy", "policy.rego", "Rego policy file")
	query := flag.String("query", "data.envoy.authz.result", "decision to evaluate")
	pack := flag.String("pack", "policies/rego/data.json", "ztmesh pack data (data.ztmesh_pack)")
	weights := flag.String("weights", "policies/trust/weights.json", "trust weights (data.ztmesh_trust)")
	threat := flag.String("threat", "policies/threat", "threat lists folder (data.ztmesh_threat)")
	certFile := flag.String("cert", "", "server certificate (PEM)")
	keyFile := flag.String("key", "", "server key (PEM)")
	caFile := flag.String("ca", "", "CA bundle that client certificates must chain to (PEM)")
	dump := flag.String("dump-input", "", "write the first request's input document to this file")
	flag.Parse()

	data := readJSON(*pack)
	data["ztmesh_trust"] = readJSON(*weights)
	data["ztmesh_threat"] = map[string]interface{}{
		"blocklist":  readLines(filepath.Join(*threat, "blocklist.txt")),
		"suspicious": readLines(filepath.Join(*threat, "suspicious.txt")),
		"trusted":    readLines(filepath.Join(*threat, "trusted.txt")),
	}
	store := inmem.NewFromObject(data)
	module, err := os.ReadFile(*policy)
	if err != nil {
		log.Fatal(err)
	}
	prepared, err := rego.New(
		rego.Query(*query), rego.Module(*policy, string(module)), rego.Store(store),
	).PrepareForEval(context.Background())
	if err != nil {
		log.Fatal(err)
	}

	cert, err := tls.LoadX509KeyPair(*certFile, *keyFile)
	if err != nil {
		log.Fatal(err)
	}
	caPEM, err := os.ReadFile(*caFile)
	if err != nil {
		log.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		log.Fatalf("%s: no certificates", *caFile)
	}
	creds := credentials.NewTLS(&tls.Config{
		Certificates: []tls.Certificate{cert}, ClientCAs: pool,
		ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: tls.VersionTLS13,
	})
	listener, err := net.Listen("tcp", *addr)
	if err != nil {
		log.Fatal(err)
	}
	grpcServer := grpc.NewServer(grpc.Creds(creds))
	authv3.RegisterAuthorizationServer(grpcServer, &server{query: prepared, store: store, dump: *dump})
	healthpb.RegisterHealthServer(grpcServer, health.NewServer())
	log.Printf("opa-envoy: serving ext_authz on %s", listener.Addr())
	log.Fatal(grpcServer.Serve(listener))
}
