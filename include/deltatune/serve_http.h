#pragma once
// The HTTP face of a serve::Engine (deltatune/serve.h), in the conventions users already script
// against (OpenAI's, as vLLM serves them):
//   GET  /health                  {"status": "ok"} (no key needed)
//   GET  /v1/models               the base and every delta
//   POST /v1/completions          {"model", "prompt", "max_tokens", "temperature", "top_p", "seed",
//                                  "stop", "n", "stream"}; stream: server-sent events, `data: [DONE]`
//   POST /v1/classify             {"model", "input": "text" | ["text", ...] | [["text", "pair"], ...]}
//   POST /v1/embeddings           {"model", "input": "text" | ["text", ...]}
//   POST /v1/deltas               {"name", "path"}: loads a delta; DELETE /v1/deltas/NAME unloads it
//   GET  /metrics                 Prometheus text
// Errors are {"error": {"message", "type", "param", "code"}} with 400 (bad request), 401 (no or wrong
// key), 404 (unknown model or endpoint), 413 (body too large), 429 + Retry-After (queue full), 503
// (stopping). A client that disconnects from a stream cancels its sequences.
//
//   serve::HttpServer http(engine, {.port = 0});
//   int port = http.bind();   // a free port
//   http.run();               // until http.stop() from another thread
#include <memory>
#include <string>

#include "deltatune/serve.h"

namespace deltatune::serve {

struct HttpOptions {
  std::string host = "127.0.0.1";
  int port = 8080;                  // 0: any free port
  std::string api_key;              // non-empty: all but /health need "Authorization: Bearer KEY"
  size_t max_body_bytes = 1 << 20;  // larger bodies: 413
  int threads = 32;                 // connections served at once
};

class HttpServer {
 public:
  HttpServer(Engine& engine, HttpOptions options);
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;
  // Binds host:port; returns the port. IoError when it cannot.
  int bind();
  // Serves until stop() (from another thread or a signal watcher).
  void run();
  void stop();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace deltatune::serve
