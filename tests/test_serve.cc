// `deltatune serve` end to end: the real binary on a free loopback port, driven over HTTP. A mixed load
// of several deltas and the base gives exactly what `generate` and `predict` give for each alone; bad
// input gets its status and error object; deltas load and unload while serving; a burst of valid,
// invalid and disconnecting clients leaves the server up and idle again. Every server stops by
// itself (SIGTERM, exit 0), every wait is bounded.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <httplib.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <cmath>
#include <fstream>
#include <functional>
#include <future>
#include <set>
#include <sstream>
#include <thread>

#include "cli_run.h"
#include "deltatune/autograd.h"
#include "deltatune/data.h"
#include "deltatune/delta.h"
#include "deltatune/delta_io.h"
#include "deltatune/model.h"
#include "serve_process.h"
#include "temp_dir.h"

using namespace deltatune;
using nlohmann::json;
namespace fs = std::filesystem;

namespace {

const std::string kGpt2 = std::string(DELTATUNE_ASSETS) + "/models/gpt2-mini";
const std::string kBert = std::string(DELTATUNE_ASSETS) + "/models/bert-mini";

// Saves a delta from `config` with every tensor (and the head's, for a classifier) randomised enough
// to change the model's answers.
fs::path save_random_delta(const std::string& model_dir, const json& config, uint64_t seed,
                           const fs::path& dir, const std::vector<std::string>& labels = {}) {
  LoadOptions options;
  options.verbose = false;
  if (!labels.empty()) {
    options.head = HeadKind::SequenceClassification;
    options.num_labels = int64_t(labels.size());
  }
  auto model = load_pretrained(model_dir, options);
  auto d = delta::make_delta(config);
  d->attach(*model);
  Generator gen(seed);
  NoGradGuard no_grad;
  std::map<std::string, Tensor> values;
  for (auto& [n, t] : d->parameters())
    values[n] = ops::add(t, Tensor::randn(t.shape(), gen, 0.3f)).contiguous();
  d->load_parameters(values);
  std::map<std::string, Tensor> head;
  for (auto& n : model->head_parameters()) {
    Tensor* p = model->find_parameter(n);
    *p = Tensor::randn(p->shape(), gen, 0.5f);
    head[n] = *p;
  }
  delta::save_delta(dir, *d, *model, head);
  if (!labels.empty()) data::LabelMap(labels).save(dir / "labels.json");
  return dir;
}

struct Reply {
  int status = 0;
  json body;
  std::string text;
  std::string retry_after;
};

Reply send(int port, const std::string& method, const std::string& path, const std::string& body = "",
           const std::string& key = "") {
  httplib::Client client("127.0.0.1", port);
  client.set_read_timeout(300);
  client.set_connection_timeout(10);
  httplib::Headers headers;
  if (!key.empty()) headers.emplace("Authorization", "Bearer " + key);
  httplib::Result r = method == "GET"      ? client.Get(path.c_str(), headers)
                      : method == "DELETE" ? client.Delete(path.c_str(), headers)
                                           : client.Post(path.c_str(), headers, body, "application/json");
  Reply out;
  if (!r) {
    out.text = "no reply: " + httplib::to_string(r.error());
    return out;
  }
  out.status = r->status;
  out.text = r->body;
  out.retry_after = r->get_header_value("Retry-After");
  out.body = json::parse(r->body, nullptr, false);
  return out;
}
Reply post(int port, const std::string& path, const json& body, const std::string& key = "") {
  return send(port, "POST", path, body.dump(), key);
}

// A streamed request whose events are collected in `events`; `on_first_chunk` runs (on the receiving
// thread) when its first chunk arrives, while the request is still running.
int stream(int port, const json& body, std::string& events, const std::function<void()>& on_first_chunk,
           const std::string& key = "") {
  httplib::Client client("127.0.0.1", port);
  client.set_read_timeout(300);
  httplib::Request req;
  req.method = "POST";
  req.path = "/v1/completions";
  req.headers = {{"Content-Type", "application/json"}};
  if (!key.empty()) req.headers.emplace("Authorization", "Bearer " + key);
  req.body = body.dump();
  bool first = true;
  req.content_receiver = [&](const char* data, size_t size, uint64_t, uint64_t) {
    if (std::exchange(first, false)) on_first_chunk();
    events.append(data, size);
    return true;
  };
  const httplib::Result r = client.send(req);
  return r ? r->status : 0;
}

json completion(const std::string& model, const std::string& prompt, int max_tokens, double temperature = 0) {
  return {{"model", model}, {"prompt", prompt}, {"max_tokens", max_tokens}, {"temperature", temperature}};
}

// What `deltatune generate` continues `prompt` with (stdout: the prompt, the continuation, a newline;
// then stderr's "generated N tokens" line).
std::string generate_cli(const std::string& delta, const std::string& prompt, int tokens,
                         const std::string& extra = "") {
  const cli_test::Result r = cli_test::run(
      "generate --threads 1 --model " + kGpt2 + (delta.empty() ? "" : " --delta " + delta) + " --prompt " +
      cli_test::quote(prompt) + " --max-new-tokens " + std::to_string(tokens) + extra);
  EXPECT_EQ(r.code, 0) << r.output;
  const size_t start = r.output.find(prompt), end = r.output.rfind("\ngenerated ");
  if (start == std::string::npos || end == std::string::npos || end < start + prompt.size())
    return "<" + r.output + ">";
  return r.output.substr(start + prompt.size(), end - start - prompt.size());
}

// The server-sent events of a streamed completion: the texts per choice, and whether [DONE] ended it.
struct Streamed {
  std::map<int64_t, std::string> text;
  std::map<int64_t, std::string> finish;
  bool done = false;
};
Streamed parse_events(const std::string& body) {
  Streamed s;
  size_t at = 0;
  while ((at = body.find("data: ", at)) != std::string::npos) {
    const size_t end = body.find("\n\n", at);
    const std::string data = body.substr(at + 6, end - at - 6);
    at = end;
    if (data == "[DONE]") {
      s.done = true;
      continue;
    }
    const json j = json::parse(data);
    for (auto& c : j["choices"]) {
      s.text[c["index"]] += c["text"].get<std::string>();
      if (!c["finish_reason"].is_null()) s.finish[c["index"]] = c["finish_reason"];
    }
  }
  return s;
}

// Opens a stream, reads its first bytes and hangs up.
void disconnect_mid_stream(int port, const std::string& model) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(uint16_t(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0) {
    json body = completion(model, "A long story begins", 200);
    body["stream"] = true;
    const std::string b = body.dump();
    const std::string req =
        "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        "Content-Length: " +
        std::to_string(b.size()) + "\r\n\r\n" + b;
    if (::send(fd, req.data(), req.size(), MSG_NOSIGNAL) > 0) {
      timeval tv{30, 0};
      setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
      char buf[512];
      (void)recv(fd, buf, sizeof buf, 0);
    }
  }
  close(fd);
}

// Sends a non-streaming completion, waits until the server has taken it (its queue is not empty), and
// hangs up without reading the reply.
void hang_up_while_waiting(int port, const json& body);

double metric(const std::string& text, const std::string& line_start) {
  const size_t at = text.find("\n" + line_start + " ");
  if (at == std::string::npos) return -1;
  return std::stod(text.substr(at + line_start.size() + 2));
}

void hang_up_while_waiting(int port, const json& body) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(uint16_t(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  const std::string b = body.dump();
  const std::string req =
      "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
      "Content-Length: " +
      std::to_string(b.size()) + "\r\n\r\n" + b;
  ASSERT_EQ(::send(fd, req.data(), req.size(), MSG_NOSIGNAL), ssize_t(req.size()));
  for (int tries = 0; tries < 600; ++tries) {
    if (metric(send(port, "GET", "/metrics").text, "deltatune_queue_depth") > 0) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  close(fd);
}

class ServeGpt2 : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = test_support::temp_dir("serve_gpt2");
    save_random_delta(kGpt2, {{"method", "lora"}, {"r", 4}}, 1, dir_ / "lora");
    save_random_delta(kGpt2, {{"method", "ia3"}}, 2, dir_ / "ia3");
    save_random_delta(kGpt2, {{"method", "prefix"}, {"num_virtual_tokens", 3}}, 3, dir_ / "prefix");
  }
  static void TearDownTestSuite() { fs::remove_all(dir_); }
  static std::vector<std::string> server_args() {
    return {"--model",   kGpt2,
            "--delta",   "lora=" + (dir_ / "lora").string(),
            "--delta",   "ia3=" + (dir_ / "ia3").string(),
            "--delta",   "prefix=" + (dir_ / "prefix").string(),
            "--threads", "1"};
  }
  static fs::path dir_;
};
fs::path ServeGpt2::dir_;

}  // namespace

TEST_F(ServeGpt2, MixedLoadGivesWhatGenerateGivesEachAlone) {
  test_support::ServeProcess server(server_args());
  ASSERT_GT(server.port(), 0) << server.log();
  const int port = server.port();
  EXPECT_EQ(send(port, "GET", "/health").status, 200);
  const Reply models = send(port, "GET", "/v1/models");
  ASSERT_EQ(models.status, 200);
  std::map<std::string, json> listed;
  for (auto& m : models.body["data"]) listed[m["id"]] = m;
  ASSERT_EQ(listed.size(), 4u) << models.text;
  EXPECT_EQ(listed["lora"]["parent"], "gpt2-mini");
  EXPECT_TRUE(listed["ia3"]["shares_batch"].get<bool>());
  EXPECT_FALSE(listed["prefix"]["shares_batch"].get<bool>());  // served by a model of its own

  // All at once: every model, two prompts, greedy; one sampled with a seed.
  const std::vector<std::string> names{"gpt2-mini", "lora", "ia3", "prefix"};
  const std::vector<std::string> prompts{"The quick brown fox", "Once upon a time there was"};
  std::vector<std::future<Reply>> replies;
  for (auto& p : prompts)
    for (auto& m : names)
      replies.push_back(
          std::async(std::launch::async, [=] { return post(port, "/v1/completions", completion(m, p, 8)); }));
  json sampled = completion("lora", prompts[0], 8, 0.8);
  sampled["seed"] = 7;
  auto sampled_reply = std::async(std::launch::async, [=] { return post(port, "/v1/completions", sampled); });
  size_t i = 0;
  std::set<std::string> distinct;
  for (auto& p : prompts)
    for (auto& m : names) {
      const Reply r = replies[i++].get();
      ASSERT_EQ(r.status, 200) << r.text;
      const std::string got = r.body["choices"][0]["text"];
      EXPECT_EQ(got, generate_cli(m == "gpt2-mini" ? "" : (dir_ / m).string(), p, 8)) << m << ": " << p;
      EXPECT_EQ(r.body["usage"]["completion_tokens"], 8);
      EXPECT_EQ(r.body["choices"][0]["finish_reason"], "length");
      distinct.insert(got);
    }
  EXPECT_GE(distinct.size(), 6u);  // the deltas really change the answers
  const Reply s = sampled_reply.get();
  ASSERT_EQ(s.status, 200) << s.text;
  EXPECT_EQ(s.body["choices"][0]["text"],
            generate_cli((dir_ / "lora").string(), prompts[0], 8, " --sample --temperature 0.8 --seed 7"));
  // Some step batched rows of different deltas together.
  const std::string metrics = send(port, "GET", "/metrics").text;
  EXPECT_LT(metric(metrics, "deltatune_step_deltas_bucket{le=\"1\"}"),
            metric(metrics, "deltatune_step_deltas_count"))
      << metrics;
  EXPECT_GT(metric(metrics, "deltatune_requests_total{endpoint=\"/v1/completions\",status=\"200\"}"), 8);

  // Streaming gives the same text in pieces, then [DONE]; n and a list of prompts give every choice.
  json streamed = completion("ia3", prompts[1], 8);
  streamed["stream"] = true;
  const Reply st = post(port, "/v1/completions", streamed);
  ASSERT_EQ(st.status, 200);
  const Streamed events = parse_events(st.text);
  EXPECT_TRUE(events.done);
  EXPECT_EQ(events.text.at(0), generate_cli((dir_ / "ia3").string(), prompts[1], 8));
  EXPECT_EQ(events.finish.at(0), "length");
  json many = completion("lora", "", 4);
  many["prompt"] = prompts;
  many["n"] = 2;
  const Reply mr = post(port, "/v1/completions", many);
  ASSERT_EQ(mr.status, 200) << mr.text;
  ASSERT_EQ(mr.body["choices"].size(), 4u);
  EXPECT_EQ(mr.body["choices"][0]["text"], mr.body["choices"][1]["text"]);  // greedy: n copies
  EXPECT_EQ(mr.body["usage"]["completion_tokens"], 16);
  // Its four prompts of two lengths were prefilled in one padded forward, and each still gives
  // generate's text.
  EXPECT_EQ(mr.body["choices"][0]["text"], generate_cli((dir_ / "lora").string(), prompts[0], 4));
  EXPECT_EQ(mr.body["choices"][2]["text"], generate_cli((dir_ / "lora").string(), prompts[1], 4));
  const std::string after = send(port, "GET", "/metrics").text;
  EXPECT_LT(metric(after, "deltatune_prefill_batch_rows_bucket{le=\"1\"}"),
            metric(after, "deltatune_prefill_batch_rows_count"))
      << after;
  // A stop string cuts the text before it.
  const std::string full = listed.empty() ? "" : generate_cli((dir_ / "lora").string(), prompts[0], 8);
  ASSERT_GE(full.size(), 3u);
  json stopped = completion("lora", prompts[0], 8);
  stopped["stop"] = full.substr(2, 1);
  const Reply sr = post(port, "/v1/completions", stopped);
  ASSERT_EQ(sr.status, 200) << sr.text;
  EXPECT_EQ(sr.body["choices"][0]["text"], full.substr(0, full.find(full.substr(2, 1))));
  EXPECT_EQ(sr.body["choices"][0]["finish_reason"], "stop");
  EXPECT_EQ(server.stop(SIGTERM), 0) << server.log();
}

TEST_F(ServeGpt2, BadInputGetsItsStatusAndErrorObject) {
  std::vector<std::string> args = server_args();
  args.insert(args.end(), {"--api-key", "sesame", "--max-queue", "1", "--max-tokens", "64"});
  test_support::ServeProcess server(args);
  ASSERT_GT(server.port(), 0) << server.log();
  const int port = server.port();
  const std::string key = "sesame";
  EXPECT_EQ(send(port, "GET", "/health").status, 200);  // no key needed
  EXPECT_EQ(send(port, "GET", "/v1/models").status, 401);
  EXPECT_EQ(send(port, "GET", "/v1/models", "", "wrong").status, 401);
  EXPECT_EQ(send(port, "GET", "/v1/models", "", key).status, 200);
  auto expect_error = [&](const Reply& r, int status, const std::string& param) {
    EXPECT_EQ(r.status, status) << r.text;
    ASSERT_TRUE(r.body.contains("error")) << r.text;
    EXPECT_TRUE(r.body["error"]["message"].is_string());
    EXPECT_TRUE(r.body["error"]["type"].is_string());
    if (!param.empty()) EXPECT_EQ(r.body["error"]["param"], param) << r.text;
  };
  expect_error(send(port, "POST", "/v1/completions", "{not json", key), 400, "");
  expect_error(send(port, "POST", "/v1/completions", "[1, 2]", key), 400, "");
  json bad = completion("lora", "Hi", 4);
  bad["max_tokens"] = "four";
  expect_error(post(port, "/v1/completions", bad, key), 400, "max_tokens");
  expect_error(post(port, "/v1/completions", completion("lora", "Hi", 65), key), 400, "max_tokens");
  bad = completion("lora", "Hi", 4);
  bad["frobnicate"] = true;
  expect_error(post(port, "/v1/completions", bad, key), 400, "frobnicate");
  bad = completion("lora", "Hi", 4);
  bad["prompt"] = 42;
  expect_error(post(port, "/v1/completions", bad, key), 400, "prompt");
  expect_error(post(port, "/v1/completions", completion("nobody", "Hi", 4), key), 404, "model");
  std::string long_prompt;
  for (int w = 0; w < 600; ++w) long_prompt += " hello";
  expect_error(post(port, "/v1/completions", completion("lora", long_prompt, 4), key), 400, "prompt");
  expect_error(post(port, "/v1/classify", json{{"model", "lora"}, {"input", "text"}}, key), 400, "model");
  expect_error(send(port, "POST", "/v1/completions", std::string(2 << 20, 'x'), key), 413, "");
  expect_error(send(port, "GET", "/v1/nothing", "", key), 404, "");
  expect_error(send(port, "DELETE", "/v1/deltas/nobody", "", key), 404, "");
  expect_error(post(port, "/v1/deltas", json{{"name", "x"}, {"path", "/no/such/folder"}}, key), 400, "");
  expect_error(post(port, "/v1/deltas", json{{"name", "x"}}, key), 400, "path");
  expect_error(post(port, "/v1/deltas", json{{"name", "x"}, {"path", "p"}, {"force", true}}, key), 400,
               "force");
  expect_error(send(port, "POST", "/v1/completions", R"({"model": "lora", "max_tokens": 9e999})", key), 400,
               "");
  // The queue holds one request: while a stream runs, the next is told to come back.
  json slow = completion("lora", "A long story begins", 64);
  slow["stream"] = true;
  std::promise<void> first_chunk, checked;
  std::thread holder([&] {
    std::string events;
    stream(
        port, slow, events,
        [&] {
          first_chunk.set_value();
          checked.get_future().wait();
        },
        key);
  });
  if (first_chunk.get_future().wait_for(std::chrono::seconds(120)) != std::future_status::ready) {
    checked.set_value();
    holder.join();
    FAIL() << "the stream sent nothing in 120 s\n" << server.log();
  }
  const Reply full = post(port, "/v1/completions", completion("lora", "Hi", 4), key);
  checked.set_value();
  expect_error(full, 429, "");
  EXPECT_EQ(full.retry_after, "1");
  holder.join();
  const std::string metrics = send(port, "GET", "/metrics", "", key).text;
  EXPECT_GE(metric(metrics, "deltatune_requests_total{endpoint=\"/v1/completions\",status=\"400\"}"), 5)
      << metrics;
  EXPECT_EQ(server.stop(SIGINT), 0) << server.log();
}

TEST_F(ServeGpt2, DeltasLoadAndUnloadWhileServing) {
  test_support::ServeProcess server({"--model", kGpt2, "--threads", "1"});
  ASSERT_GT(server.port(), 0) << server.log();
  const int port = server.port();
  const std::string prompt = "The quick brown fox";
  EXPECT_EQ(post(port, "/v1/completions", completion("mine", prompt, 4)).status, 404);
  const Reply loaded = post(port, "/v1/deltas", json{{"name", "mine"}, {"path", (dir_ / "lora").string()}});
  ASSERT_EQ(loaded.status, 200) << loaded.text;
  EXPECT_EQ(post(port, "/v1/deltas", json{{"name", "mine"}, {"path", (dir_ / "lora").string()}}).status, 400);
  const Reply listed = send(port, "GET", "/v1/models");
  EXPECT_EQ(listed.body["data"].size(), 2u) << listed.text;
  const std::string want = generate_cli((dir_ / "lora").string(), prompt, 24);
  // Unloaded while its request runs: the request still gets its exact answer; new ones get 404.
  json streamed = completion("mine", prompt, 24);
  streamed["stream"] = true;
  std::string events;
  const int status = stream(port, streamed, events, [&] {  // at its first chunk
    EXPECT_EQ(send(port, "DELETE", "/v1/deltas/mine").status, 200);
    EXPECT_EQ(send(port, "GET", "/v1/models").body["data"].size(), 1u);  // listed no more
  });
  ASSERT_EQ(status, 200) << events << server.log();
  EXPECT_EQ(parse_events(events).text[0], want);
  EXPECT_EQ(post(port, "/v1/completions", completion("mine", prompt, 4)).status, 404);
  EXPECT_EQ(send(port, "DELETE", "/v1/deltas/mine").status, 404);
  EXPECT_EQ(send(port, "DELETE", "/v1/deltas/gpt2-mini").status, 400);  // the base stays
  // Loaded again under another name, it answers as before.
  ASSERT_EQ(post(port, "/v1/deltas", json{{"name", "again"}, {"path", (dir_ / "lora").string()}}).status,
            200);
  EXPECT_EQ(post(port, "/v1/completions", completion("again", prompt, 24)).body["choices"][0]["text"], want);
  {  // the same LoRA in PEFT's format
    LoadOptions options;
    options.verbose = false;
    auto model = load_pretrained(kGpt2, options);
    delta::SavedDelta saved = delta::load_delta(dir_ / "lora", *model);
    delta::save_peft(dir_ / "peft", *saved.delta, *model);
  }
  const Reply peft = post(port, "/v1/deltas", json{{"name", "peft"}, {"path", (dir_ / "peft").string()}});
  ASSERT_EQ(peft.status, 200) << peft.text;
  EXPECT_EQ(post(port, "/v1/completions", completion("peft", prompt, 24)).body["choices"][0]["text"], want);
  EXPECT_EQ(server.stop(SIGTERM), 0) << server.log();
}

TEST_F(ServeGpt2, BurstOfValidInvalidAndDisconnectingClientsLeavesItUp) {
  test_support::ServeProcess server(server_args());
  ASSERT_GT(server.port(), 0) << server.log();
  const int port = server.port();
  const std::vector<std::string> names{"gpt2-mini", "lora", "ia3", "prefix"};
  std::map<std::string, std::string> alone;  // each model's answer with nothing else running
  for (auto& m : names)
    alone[m] = post(port, "/v1/completions", completion(m, "Hello there", 3)).body["choices"][0]["text"];
  const long idle_kb = server.rss_kb();
  constexpr int kRequests = 300, kClients = 96;  // more clients than the server has HTTP threads (32)
  std::atomic<int> next{0}, wrong{0};
  std::mutex report_mutex;
  std::string report;  // what came back wrong, a request without any HTTP reply included (status 0)
  auto expect_status = [&](const Reply& r, int status, const std::string& what) {
    if (r.status == status) return true;
    ++wrong;
    std::lock_guard lock(report_mutex);
    report += what + ": " + std::to_string(r.status) + " " + r.text + "\n";
    return false;
  };
  std::vector<std::thread> clients;
  for (int c = 0; c < kClients; ++c)
    clients.emplace_back([&] {
      for (int i = next++; i < kRequests; i = next++) {
        const std::string& m = names[size_t(i) % names.size()];
        switch (i % 5) {
          case 0:
          case 1: {
            const Reply r = post(port, "/v1/completions", completion(m, "Hello there", 3));
            if (expect_status(r, 200, m) && r.body["choices"][0]["text"] != alone[m]) {
              ++wrong;
              std::lock_guard lock(report_mutex);
              report += m + ": " + r.text + "\n";
            }
            break;
          }
          case 2:
            expect_status(send(port, "POST", "/v1/completions", "{\"model\": "), 400, "bad JSON");
            break;
          case 3:
            expect_status(post(port, "/v1/completions", completion("ghost", "Hi", 3)), 404, "unknown model");
            break;
          default:
            disconnect_mid_stream(port, m);
        }
      }
    });
  for (auto& t : clients) t.join();
  EXPECT_EQ(wrong.load(), 0) << report;
  EXPECT_EQ(send(port, "GET", "/health").status, 200);
  // Cancelled streams are dropped: the queue empties (bounded wait) and memory returns near idle.
  double depth = -1;
  for (int tries = 0; tries < 600 && depth != 0; ++tries) {
    depth = metric(send(port, "GET", "/metrics").text, "deltatune_queue_depth");
    if (depth != 0) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_EQ(depth, 0);
  EXPECT_LT(server.rss_kb(), idle_kb + 200 * 1024) << "idle " << idle_kb << " kB";
  for (auto& m : names)
    EXPECT_EQ(post(port, "/v1/completions", completion(m, "Hello there", 3)).body["choices"][0]["text"],
              alone[m]);
  EXPECT_EQ(server.stop(SIGTERM), 0) << server.log();
}

// A client of a non-streaming completion that hangs up while it waits: its sequence is cancelled (the
// completion could run to the 512th position otherwise), the queue empties, and the server goes on.
TEST_F(ServeGpt2, HangingUpOnANonStreamingCompletionCancelsIt) {
  test_support::ServeProcess server(server_args());
  ASSERT_GT(server.port(), 0) << server.log();
  const int port = server.port();
  json long_one = completion("lora", "A long story begins", 1000, 1.0);
  long_one["seed"] = 7;
  hang_up_while_waiting(port, long_one);
  double cancelled = -1, depth = -1;
  for (int tries = 0; tries < 600 && (cancelled < 1 || depth != 0); ++tries) {
    const std::string text = send(port, "GET", "/metrics").text;
    cancelled = metric(text, "deltatune_completions_total{finish_reason=\"cancelled\"}");
    depth = metric(text, "deltatune_queue_depth");
    if (cancelled < 1 || depth != 0) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  const std::string text = send(port, "GET", "/metrics").text;
  EXPECT_EQ(cancelled, 1) << text;
  EXPECT_EQ(depth, 0) << text;
  EXPECT_EQ(metric(text, "deltatune_requests_total{endpoint=\"/v1/completions\",status=\"499\"}"), 1) << text;
  EXPECT_EQ(metric(text, "deltatune_completions_total{finish_reason=\"length\"}"), -1)
      << text;  // none ran out
  EXPECT_EQ(post(port, "/v1/completions", completion("lora", "Hello there", 3)).status, 200);
  EXPECT_EQ(server.stop(SIGTERM), 0) << server.log();
}

TEST(ServeBert, ClassifyMatchesPredictAndEmbeds) {
  const fs::path dir = test_support::temp_dir("serve_bert");
  save_random_delta(kBert, {{"method", "lora"}, {"r", 4}}, 11, dir / "sentiment", {"negative", "positive"});
  save_random_delta(kBert, {{"method", "ia3"}}, 12, dir / "topic", {"art", "science", "sport"});
  const std::vector<std::string> texts{"a wonderful film", "dull and far too long",
                                       "the match went to extra time"};
  {
    std::ofstream in(dir / "inputs.jsonl");
    for (auto& t : texts) in << json{{"text", t}}.dump() << "\n";
  }
  test_support::ServeProcess server({"--model", kBert, "--delta", "sentiment=" + (dir / "sentiment").string(),
                                     "--delta", "topic=" + (dir / "topic").string(), "--threads", "1"});
  ASSERT_GT(server.port(), 0) << server.log();
  const int port = server.port();
  for (const std::string name : {"sentiment", "topic"}) {
    auto a = std::async(std::launch::async, [&] {
      return post(port, "/v1/classify", json{{"model", name}, {"input", texts}});
    });
    const cli_test::Result predicted =
        cli_test::run("predict --model " + kBert + " --delta " + (dir / name).string() + " --input " +
                      (dir / "inputs.jsonl").string());
    ASSERT_EQ(predicted.code, 0) << predicted.output;
    std::vector<json> lines;
    std::istringstream out(predicted.output);
    for (std::string line; std::getline(out, line);)
      if (!line.empty() && line[0] == '{') lines.push_back(json::parse(line));
    const Reply r = a.get();
    ASSERT_EQ(r.status, 200) << r.text;
    ASSERT_EQ(lines.size(), texts.size());
    for (size_t i = 0; i < texts.size(); ++i) {
      const json& got = r.body["data"][i];
      EXPECT_EQ(got["label"], lines[i]["label"]) << name << " " << i;
      for (auto& [label, p] : lines[i]["probabilities"].items())
        EXPECT_NEAR(got["probabilities"][label].get<double>(), p.get<double>(), 1e-5) << name << " " << label;
      EXPECT_NEAR(got["probability"].get<double>(),
                  got["probabilities"][got["label"].get<std::string>()].get<double>(), 1e-12);
    }
  }
  const Reply pair =
      post(port, "/v1/classify",
           json{{"model", "topic"},
                {"input", json::array({json::array({"a question", "an answer"}), json::array({"x", "y"})})}});
  ASSERT_EQ(pair.status, 200) << pair.text;
  EXPECT_EQ(pair.body["data"].size(), 2u);
  // Embeddings: one vector per input, of the model's width; a delta changes them, the same input does not.
  const Reply base = post(port, "/v1/embeddings", json{{"model", "bert-mini"}, {"input", texts}});
  const Reply mine = post(port, "/v1/embeddings", json{{"model", "sentiment"}, {"input", texts[0]}});
  ASSERT_EQ(base.status, 200) << base.text;
  ASSERT_EQ(mine.status, 200) << mine.text;
  ASSERT_EQ(base.body["data"].size(), 3u);
  const std::vector<float> b0 = base.body["data"][0]["embedding"], m0 = mine.body["data"][0]["embedding"];
  EXPECT_EQ(b0.size(), 256u);
  EXPECT_EQ(m0.size(), b0.size());
  EXPECT_NE(b0, m0);
  const Reply again = post(port, "/v1/embeddings", json{{"model", "bert-mini"}, {"input", texts[0]}});
  const std::vector<float> alone = again.body["data"][0]["embedding"];  // unpadded: the same within rounding
  ASSERT_EQ(alone.size(), b0.size());
  for (size_t k = 0; k < b0.size(); ++k) EXPECT_NEAR(alone[k], b0[k], 1e-4) << k;
  EXPECT_EQ(post(port, "/v1/classify", json{{"model", "bert-mini"}, {"input", "x"}}).status,
            400);  // no classifier head
  EXPECT_EQ(post(port, "/v1/completions", completion("sentiment", "x", 2)).status, 400);
  EXPECT_EQ(server.stop(SIGTERM), 0) << server.log();
  fs::remove_all(dir);
}

// A quantised base (--quantize nf4, QLoRA's): completions of the base, a LoRA that shares its batch
// and a prefix served alone, and a classifier's answers, each what `generate` / `predict` give with
// the same --quantize; and they differ from the float base's (the flag took effect).
TEST(ServeQuantized, AnswersAsGenerateAndPredictDoOnTheSameQuantisedBase) {
  const fs::path dir = test_support::temp_dir("serve_quantized");
  save_random_delta(kGpt2, {{"method", "lora"}, {"r", 4}}, 21, dir / "lora");
  save_random_delta(kGpt2, {{"method", "prefix"}, {"num_virtual_tokens", 3}}, 22, dir / "prefix");
  save_random_delta(kBert, {{"method", "lora"}, {"r", 4}}, 23, dir / "sentiment", {"negative", "positive"});
  const std::string prompt = "The quick brown fox";
  {
    test_support::ServeProcess server({"--model", kGpt2, "--quantize", "nf4", "--delta",
                                       "lora=" + (dir / "lora").string(), "--delta",
                                       "prefix=" + (dir / "prefix").string(), "--threads", "1"});
    ASSERT_GT(server.port(), 0) << server.log();
    for (const std::string name : {"gpt2-mini", "lora", "prefix"}) {
      const Reply r = post(server.port(), "/v1/completions", completion(name, prompt, 8));
      ASSERT_EQ(r.status, 200) << r.text;
      const std::string delta = name == "gpt2-mini" ? "" : (dir / name).string();
      const std::string quantised = generate_cli(delta, prompt, 8, " --quantize nf4");
      EXPECT_EQ(r.body["choices"][0]["text"], quantised) << name;
      if (name == "lora") EXPECT_NE(quantised, generate_cli(delta, prompt, 8)) << "nf4 changed nothing";
    }
    EXPECT_EQ(server.stop(SIGTERM), 0) << server.log();
  }
  std::ofstream(dir / "inputs.jsonl") << json{{"text", "a wonderful film"}}.dump() << "\n"
                                      << json{{"text", "dull and far too long"}}.dump() << "\n";
  test_support::ServeProcess server({"--model", kBert, "--quantize", "nf4", "--delta",
                                     "sentiment=" + (dir / "sentiment").string(), "--threads", "1"});
  ASSERT_GT(server.port(), 0) << server.log();
  const Reply r =
      post(server.port(), "/v1/classify",
           json{{"model", "sentiment"}, {"input", {"a wonderful film", "dull and far too long"}}});
  ASSERT_EQ(r.status, 200) << r.text;
  for (const std::string quantize : {" --quantize nf4", ""}) {
    const cli_test::Result predicted =
        cli_test::run("predict --threads 1 --model " + kBert + " --delta " + (dir / "sentiment").string() +
                      " --input " + (dir / "inputs.jsonl").string() + quantize);
    ASSERT_EQ(predicted.code, 0) << predicted.output;
    std::istringstream out(predicted.output);
    double largest_difference = 0;
    size_t i = 0;
    for (std::string line; std::getline(out, line);)
      if (!line.empty() && line[0] == '{') {
        const json want = json::parse(line), &got = r.body["data"][i++];
        for (auto& [label, p] : want["probabilities"].items())
          largest_difference = std::max(
              largest_difference, std::fabs(got["probabilities"][label].get<double>() - p.get<double>()));
      }
    ASSERT_EQ(i, 2u) << predicted.output;
    if (quantize.empty())
      EXPECT_GT(largest_difference, 1e-4) << "the float base answers as the nf4 one";
    else
      EXPECT_LT(largest_difference, 1e-5);
  }
  EXPECT_EQ(server.stop(SIGTERM), 0) << server.log();
  fs::remove_all(dir);
}
