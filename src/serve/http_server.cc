// The HTTP routes of deltatune/serve_http.h over cpp-httplib: each handler parses its body
// (openai_api.h), calls the engine, and writes the reply; every exception becomes an error object
// with its status, so no request can take the server down.
#include <httplib.h>
#include <sys/socket.h>

#include <atomic>

#include "deltatune/serve_http.h"
#include "deltatune/serve_metrics.h"
#include "serve/client_connection.h"
#include "serve/openai_api.h"

namespace deltatune::serve {
namespace {
using nlohmann::json;

void reply(httplib::Response& res, int status, const json& body) {
  res.status = status;
  res.set_content(api::dump(body), "application/json");
}

// The status and error object for the exception being handled.
void reply_error(httplib::Response& res) {
  try {
    throw;
  } catch (const BadRequest& e) {
    reply(res, 400, api::error_body(e.what(), "invalid_request_error", e.param));
  } catch (const UnknownModel& e) {
    reply(res, 404, api::error_body(e.what(), "invalid_request_error", "model"));
  } catch (const QueueFull& e) {
    res.set_header("Retry-After", "1");
    reply(res, 429, api::error_body(e.what(), "rate_limit_error"));
  } catch (const ShuttingDown& e) {
    reply(res, 503, api::error_body(e.what(), "server_error"));
  } catch (const ConfigError& e) {
    reply(res, 400, api::error_body(e.what(), "invalid_request_error"));
  } catch (const IoError& e) {
    reply(res, 400, api::error_body(e.what(), "invalid_request_error"));
  } catch (const std::exception& e) {
    reply(res, 500, api::error_body(e.what(), "server_error"));
  }
}

template <class F>
httplib::Server::Handler guarded(F handler) {
  return [handler](const httplib::Request& req, httplib::Response& res) {
    try {
      handler(req, res);
    } catch (...) {
      reply_error(res);
    }
  };
}

// The endpoint a request counts under in /metrics (a delta's name is not a label of its own).
std::string endpoint_label(const std::string& path) {
  for (const char* known : {"/health", "/metrics", "/v1/models", "/v1/completions", "/v1/classify",
                            "/v1/embeddings", "/v1/deltas"})
    if (path == known) return known;
  if (path.rfind("/v1/deltas/", 0) == 0) return "/v1/deltas/{name}";
  return "other";
}

std::string completion_id() {
  static std::atomic<uint64_t> next{1};
  return "cmpl-" + std::to_string(next++);
}

// Streams the completions as server-sent events: chunks as text settles, a last chunk per choice with
// its finish_reason, then `data: [DONE]`. A client that goes away cancels every sequence.
void stream_completions(httplib::Response& res, std::vector<std::shared_ptr<PendingCompletion>> pending,
                        std::string model, bool include_usage) {
  struct Progress {
    std::vector<std::shared_ptr<PendingCompletion>> pending;
    std::vector<bool> ended;
    std::string id = completion_id(), model;
    bool include_usage = false;
    void cancel() {
      for (auto& p : pending) p->cancel();
    }
  };
  auto progress = std::make_shared<Progress>();
  progress->ended.assign(pending.size(), false);
  progress->pending = std::move(pending);
  progress->model = std::move(model);
  progress->include_usage = include_usage;
  res.set_header("Cache-Control", "no-cache");
  res.set_chunked_content_provider(
      "text/event-stream",
      [progress](size_t, httplib::DataSink& sink) {
        Progress& p = *progress;
        std::string events;
        bool all_ended = true;
        for (size_t i = 0; i < p.pending.size(); ++i) {
          if (p.ended[i]) continue;
          std::string text;
          const bool done =
              p.pending[i]->take(text, std::chrono::milliseconds(p.pending.size() == 1 ? 100 : 10));
          std::string reason;
          if (done) {
            try {
              reason = p.pending[i]->result().finish_reason;
            } catch (const std::exception& e) {
              events += "data: " + api::dump(api::error_body(e.what(), "server_error")) + "\n\n";
              reason = "error";
            }
            p.ended[i] = true;
          }
          all_ended = all_ended && done;
          if (!text.empty() || done)
            events +=
                "data: " + api::dump(api::completion_chunk(p.id, p.model, int64_t(i), text, reason)) + "\n\n";
        }
        if (all_ended) {
          if (p.include_usage) {
            int64_t prompt = 0, produced = 0;
            for (auto& c : p.pending) {
              prompt += c->prompt_tokens();
              try {
                produced += int64_t(c->result().ids.size());
              } catch (const std::exception&) {
              }
            }
            json usage = {{"id", p.id},
                          {"object", "text_completion"},
                          {"model", p.model},
                          {"choices", json::array()},
                          {"usage",
                           {{"prompt_tokens", prompt},
                            {"completion_tokens", produced},
                            {"total_tokens", prompt + produced}}}};
            events += "data: " + api::dump(usage) + "\n\n";
          }
          events += "data: [DONE]\n\n";
        }
        if (!events.empty() && !sink.write(events.data(), events.size())) {
          p.cancel();
          return false;
        }
        if (all_ended) sink.done();
        return true;
      },
      [progress](bool success) {
        if (!success) progress->cancel();
      });
}

}  // namespace

struct HttpServer::Impl {
  Engine& engine;
  HttpOptions options;
  httplib::Server server;
  std::atomic<int> listening_socket{-1};  // the bound socket, for the backlog (see bind())
  Impl(Engine& e, HttpOptions o) : engine(e), options(std::move(o)) {}
  void routes();
  void completions(const httplib::Request& req, httplib::Response& res);
};

void HttpServer::Impl::completions(const httplib::Request& req, httplib::Response& res) {
  const api::CompletionCall call = api::parse_completion(api::parse_body(req.body));
  std::vector<std::shared_ptr<PendingCompletion>> pending;
  try {
    for (auto& prompt : call.prompts)
      for (int64_t i = 0; i < call.n; ++i) {
        CompletionRequest r = call.request;
        r.prompt = prompt;
        r.options.seed += uint64_t(i);
        pending.push_back(engine.submit(r));
      }
  } catch (...) {
    for (auto& p : pending) p->cancel();  // all of the request or none of it
    throw;
  }
  if (call.stream) return stream_completions(res, std::move(pending), call.request.model, call.include_usage);
  // A client that hangs up while it waits cancels its sequences (a stream's is noticed when a write
  // fails); its reply, never read, counts as 499 (nginx's "client closed request").
  ClientConnection client(req.remote_addr, req.remote_port);
  for (auto& p : pending)
    while (!p->wait(std::chrono::milliseconds(100)))
      if (client.gone()) {
        for (auto& q : pending) q->cancel();
        return reply(res, 499, api::error_body("the client closed the connection", "client_closed"));
      }
  std::vector<Completion> done;
  for (auto& p : pending) done.push_back(p->result());
  reply(res, 200, api::completion_body(completion_id(), call.request.model, done));
}

void HttpServer::Impl::routes() {
  server.Get("/health", guarded([](auto&, auto& res) { reply(res, 200, {{"status", "ok"}}); }));
  server.Get("/v1/models", guarded([this](auto&, auto& res) {
               reply(res, 200, api::models_body(engine.models(), engine.base_name()));
             }));
  server.Get("/metrics", guarded([this](auto&, auto& res) {
               res.set_content(engine.metrics().prometheus([this] { return engine.queue_depth(); }),
                               "text/plain; version=0.0.4");
             }));
  server.Post("/v1/completions", guarded([this](auto& req, auto& res) { completions(req, res); }));
  server.Post("/v1/classify", guarded([this](auto& req, auto& res) {
                const api::ClassifyCall call = api::parse_classify(api::parse_body(req.body));
                reply(res, 200, api::classify_body(call.model, engine.classify(call.model, call.inputs)));
              }));
  server.Post("/v1/embeddings", guarded([this](auto& req, auto& res) {
                const api::EmbeddingsCall call = api::parse_embeddings(api::parse_body(req.body));
                reply(res, 200, api::embeddings_body(call.model, engine.embed(call.model, call.inputs)));
              }));
  server.Post("/v1/deltas", guarded([this](auto& req, auto& res) {
                const api::DeltaLoadCall call = api::parse_delta_load(api::parse_body(req.body));
                engine.add_delta(call.name, call.path);
                reply(res, 200, {{"name", call.name}, {"loaded", true}});
              }));
  server.Delete(R"(/v1/deltas/([^/]+))", guarded([this](auto& req, auto& res) {
                  const std::string name = req.matches[1];
                  engine.remove_delta(name);
                  reply(res, 200, {{"name", name}, {"unloading", true}});
                }));
}

HttpServer::HttpServer(Engine& engine, HttpOptions options)
    : impl_(std::make_unique<Impl>(engine, std::move(options))) {
  Impl& i = *impl_;
  const int threads = std::max(2, i.options.threads);
  i.server.new_task_queue = [threads] { return new httplib::ThreadPool(size_t(threads)); };
  i.server.set_payload_max_length(i.options.max_body_bytes);
  i.server.set_keep_alive_timeout(2);
  i.server.set_socket_options([&i](int fd) {
    const int on = 1;  // what httplib's default options set, which this callback replaces
    ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on);
    i.listening_socket = fd;
  });
  i.server.set_read_timeout(10);
  i.server.set_pre_routing_handler([&i](const httplib::Request& req, httplib::Response& res) {
    if (i.options.api_key.empty() || req.path == "/health")
      return httplib::Server::HandlerResponse::Unhandled;
    if (req.get_header_value("Authorization") == "Bearer " + i.options.api_key)
      return httplib::Server::HandlerResponse::Unhandled;
    reply(res, 401,
          api::error_body("a valid API key is required (Authorization: Bearer KEY)", "authentication_error"));
    return httplib::Server::HandlerResponse::Handled;
  });
  // Statuses httplib sets itself (no route, a body over the limit) get an error object too.
  i.server.set_error_handler([&i](const httplib::Request& req, httplib::Response& res) {
    if (!res.body.empty()) return;
    if (res.status == 404)
      reply(res, 404, api::error_body("no endpoint " + req.method + " " + req.path, "invalid_request_error"));
    else if (res.status == 413)
      reply(res, 413,
            api::error_body("the body is over the server's limit of " +
                                std::to_string(i.options.max_body_bytes) + " bytes",
                            "invalid_request_error"));
    else
      reply(res, res.status, api::error_body("HTTP " + std::to_string(res.status), "invalid_request_error"));
  });
  i.server.set_logger([&i](const httplib::Request& req, const httplib::Response& res) {
    i.engine.metrics().request(endpoint_label(req.path), res.status);
  });
  i.routes();
}

HttpServer::~HttpServer() { stop(); }

int HttpServer::bind() {
  Impl& i = *impl_;
  const int port = i.options.port == 0
                       ? i.server.bind_to_any_port(i.options.host)
                       : (i.server.bind_to_port(i.options.host, i.options.port) ? i.options.port : -1);
  if (port < 0)
    throw IoError("cannot listen on " + i.options.host + ":" + std::to_string(i.options.port) +
                  " (in use, or not an address of this machine)");
  // cpp-httplib 0.11 listens with a backlog of 5 (a compile-time constant of Debian's library). A burst
  // of clients connecting at once overflows that queue; the kernel then drops their handshakes and
  // each waits for a retransmission (a second or more). A second listen() on the bound socket only
  // raises the backlog, to the system's limit (net.core.somaxconn), as uvicorn's 2048 or nginx's 511.
  if (i.listening_socket >= 0) ::listen(i.listening_socket, SOMAXCONN);
  return port;
}

void HttpServer::run() { impl_->server.listen_after_bind(); }

void HttpServer::stop() { impl_->server.stop(); }

}  // namespace deltatune::serve
