// deltatune serve --model DIR [--delta NAME=DIR ...] [--host H] [--port N] [--api-key KEY]
//                 [--max-batch-tokens N] [--max-queue N] [--max-tokens N] [--threads N] [--bf16]
//                 [--quantize nf4|nf4-dq|int8|q8_0|q4_0]
// Flags -> serve::Engine + serve::HttpServer (deltatune/serve.h, serve_http.h); prints the address and
// the models, serves until SIGINT/SIGTERM, then finishes what is in flight (10 s at most) and exits 0.
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <thread>

#include "command.h"
#include "deltatune/serve.h"
#include "deltatune/serve_http.h"

namespace {
std::atomic<int> g_stop_signal{0};
extern "C" void on_serve_stop_signal(int signal) { g_stop_signal = signal; }

std::pair<std::string, std::string> named_delta(const std::string& spec) {
  const auto eq = spec.find('=');
  if (eq == std::string::npos || eq == 0 || eq + 1 == spec.size())
    throw deltatune::cli::ExitError{"--delta '" + spec + "': expected NAME=DIR"};
  return {spec.substr(0, eq), spec.substr(eq + 1)};
}

void setup(CLI::App& app) {
  auto engine_options = std::make_shared<deltatune::serve::EngineOptions>();
  auto http = std::make_shared<deltatune::serve::HttpOptions>();
  auto model_dir = std::make_shared<std::string>();
  auto deltas = std::make_shared<std::vector<std::string>>();
  app.add_option("--model", *model_dir, "The base model folder (Hugging Face checkpoint)")->required();
  app.add_option("--delta", *deltas,
                 "A delta to serve, NAME=DIR (repeatable; its name is the request's model)");
  app.add_option("--host", http->host, "Address to listen on")->default_val("127.0.0.1");
  app.add_option("--port", http->port, "Port to listen on (0: any free port)")
      ->default_val(8080)
      ->check(CLI::Range(0, 65535));
  app.add_option("--api-key", http->api_key, "Require 'Authorization: Bearer KEY' (all but /health)");
  app.add_option("--max-batch-tokens", engine_options->max_batch_tokens,
                 "Tokens one scheduler step runs at most (prefill tokens + decode rows)")
      ->default_val(2048)
      ->check(CLI::Range(int64_t(1), int64_t(1) << 30));
  app.add_option("--max-queue", engine_options->max_queue,
                 "Requests waiting or running at once; more get 429")
      ->default_val(256)
      ->check(CLI::Range(int64_t(1), int64_t(1) << 20));
  app.add_option("--max-tokens", engine_options->max_tokens_cap, "The most tokens one completion may ask for")
      ->default_val(1024)
      ->check(CLI::Range(int64_t(1), int64_t(1) << 20));
  app.add_flag("--one-delta-per-step", engine_options->one_delta_per_step,
               "Decode or classify one delta's requests per step (the no-mixing baseline, for benchmarks)");
  app.add_flag("--bf16", engine_options->bf16, "bfloat16 products where the CPU has AVX-512 BF16");
  deltatune::cli::add_quantize_option(app, engine_options->quantize);
  deltatune::cli::add_threads_option(app);
  app.callback([=] {
    std::vector<std::pair<std::string, std::string>> named;
    for (auto& spec : *deltas) {
      named.push_back(named_delta(spec));
      if (!std::filesystem::is_directory(named.back().second))
        throw deltatune::cli::ExitError{"--delta " + spec + ": '" + named.back().second +
                                        "' is not a delta folder"};
    }
    if (!std::filesystem::is_directory(*model_dir))
      throw deltatune::cli::ExitError{"model folder '" + *model_dir + "' does not exist or is not a folder"};
    std::signal(SIGPIPE, SIG_IGN);  // a client that hangs up is a failed write, not the end of the server
    deltatune::serve::EngineOptions options = *engine_options;
    options.model_dir = *model_dir;
    deltatune::serve::Engine engine(options);
    for (auto& [name, dir] : named) engine.add_delta(name, dir);
    deltatune::serve::HttpServer server(engine, *http);
    const int port = server.bind();
    std::printf("deltatune serve: listening on http://%s:%d\n", http->host.c_str(), port);
    for (auto& m : engine.models())
      std::printf("  model %s: %s%s%s\n", m.name.c_str(), m.method.c_str(), m.path.empty() ? "" : " from ",
                  m.path.c_str());
    std::fflush(stdout);
    g_stop_signal = 0;
    std::signal(SIGINT, on_serve_stop_signal);
    std::signal(SIGTERM, on_serve_stop_signal);
    std::thread serving([&] { server.run(); });
    while (g_stop_signal == 0) std::this_thread::sleep_for(std::chrono::milliseconds(50));
    std::signal(SIGINT, SIG_DFL);  // a second signal ends the process at once
    std::signal(SIGTERM, SIG_DFL);
    std::fprintf(stderr, "deltatune serve: stopping (finishing requests in flight)\n");
    engine.stop(std::chrono::seconds(10));
    server.stop();
    serving.join();
    std::printf("deltatune serve: stopped\n");
  });
}
deltatune::cli::Register reg(
    "serve", "Serve a base model and many deltas over HTTP (OpenAI-style API, mixed-delta batching)", setup);
}  // namespace
