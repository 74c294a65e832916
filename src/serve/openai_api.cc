#include "serve/openai_api.h"

#include <ctime>
#include <set>

namespace deltatune::serve::api {
using nlohmann::json;

namespace {
const char* kind(const json& v) { return v.type_name(); }

void refuse_unknown(const json& body, const std::set<std::string>& known) {
  for (auto& [key, _] : body.items())
    if (!known.count(key)) throw BadRequest("unknown field '" + key + "'", key);
}

std::string required_string(const json& body, const std::string& key) {
  if (!body.contains(key)) throw BadRequest("'" + key + "' is required", key);
  if (!body[key].is_string() || body[key].get<std::string>().empty())
    throw BadRequest("'" + key + "' must be a non-empty string, got " + kind(body[key]), key);
  return body[key].get<std::string>();
}

template <class T>
T number(const json& body, const std::string& key, T fallback, double low, double high) {
  if (!body.contains(key) || body[key].is_null()) return fallback;
  const json& v = body[key];
  const bool ok = std::is_integral_v<T> ? (v.is_number_integer() || v.is_number_unsigned()) : v.is_number();
  if (!ok)
    throw BadRequest(
        "'" + key + "' must be " + (std::is_integral_v<T> ? "an integer" : "a number") + ", got " + kind(v),
        key);
  const double d = v.get<double>();
  if (d < low || d > high)
    throw BadRequest("'" + key + "' must be between " + json(low).dump() + " and " + json(high).dump() +
                         ", got " + v.dump(),
                     key);
  return v.get<T>();
}

// A string or a non-empty list of strings.
std::vector<std::string> strings(const json& body, const std::string& key, size_t max_items) {
  if (!body.contains(key)) throw BadRequest("'" + key + "' is required", key);
  const json& v = body[key];
  if (v.is_string()) return {v.get<std::string>()};
  if (!v.is_array() || v.empty())
    throw BadRequest("'" + key + "' must be a string or a non-empty list of strings, got " + kind(v), key);
  if (v.size() > max_items)
    throw BadRequest("'" + key + "' lists " + std::to_string(v.size()) + " items; at most " +
                         std::to_string(max_items) + " are served per request",
                     key);
  std::vector<std::string> out;
  for (auto& item : v) {
    if (!item.is_string()) throw BadRequest("'" + key + "' items must be strings, got " + kind(item), key);
    out.push_back(item.get<std::string>());
  }
  return out;
}

// OpenAI fields this server accepts only at their neutral value.
void neutral_only(const json& body) {
  for (const char* k : {"presence_penalty", "frequency_penalty"})
    if (body.contains(k) && !(body[k].is_number() && body[k].get<double>() == 0.0))
      throw BadRequest(std::string("'") + k + "' is not supported (only 0)", k);
  if (body.contains("logprobs") && !body["logprobs"].is_null())
    throw BadRequest("'logprobs' is not supported", "logprobs");
  if (body.contains("echo") && body["echo"] != false) throw BadRequest("'echo' is not supported", "echo");
  if (body.contains("best_of") && body["best_of"] != 1)
    throw BadRequest("'best_of' is not supported", "best_of");
}
}  // namespace

json parse_body(const std::string& body) {
  json j;
  try {
    j = json::parse(body);
  } catch (const json::exception& e) {  // parse_error, or out_of_range for a huge number
    throw BadRequest(std::string("the body is not valid JSON: ") + e.what(), "");
  }
  if (!j.is_object()) throw BadRequest(std::string("the body must be a JSON object, got ") + kind(j), "");
  return j;
}

CompletionCall parse_completion(const json& body) {
  refuse_unknown(body, {"model", "prompt", "max_tokens", "temperature", "top_p", "top_k", "seed", "stop", "n",
                        "stream", "stream_options", "user", "presence_penalty", "frequency_penalty",
                        "logprobs", "echo", "best_of"});
  neutral_only(body);
  CompletionCall c;
  c.request.model = required_string(body, "model");
  c.prompts = strings(body, "prompt", 64);
  GenerationOptions& o = c.request.options;
  o.max_new_tokens = number<int64_t>(body, "max_tokens", 16, 1, 1e9);
  o.temperature = number<float>(body, "temperature", 1.0f, 0.0, 2.0);
  o.sample = o.temperature > 0;  // temperature 0: greedy
  o.top_p = number<float>(body, "top_p", 1.0f, 1e-6, 1.0);
  o.top_k = number<int64_t>(body, "top_k", 0, 0, 1e9);
  o.seed = number<uint64_t>(body, "seed", 0, 0, 1.8e19);
  c.n = number<int64_t>(body, "n", 1, 1, 16);
  if (body.contains("stop") && !body["stop"].is_null()) c.request.stop = strings(body, "stop", 4);
  if (body.contains("stream") && !body["stream"].is_boolean())
    throw BadRequest(std::string("'stream' must be a boolean, got ") + kind(body["stream"]), "stream");
  c.stream = body.value("stream", false);
  if (body.contains("stream_options")) {
    const json& so = body["stream_options"];
    if (!so.is_object()) throw BadRequest("'stream_options' must be an object", "stream_options");
    c.include_usage = so.value("include_usage", false);
  }
  if (int64_t(c.prompts.size()) * c.n > 64)
    throw BadRequest("prompts times n must be at most 64 completions per request", "n");
  return c;
}

ClassifyCall parse_classify(const json& body) {
  refuse_unknown(body, {"model", "input", "user"});
  ClassifyCall c;
  c.model = required_string(body, "model");
  if (!body.contains("input")) throw BadRequest("'input' is required", "input");
  const json& in = body["input"];
  auto one = [&](const json& item) -> ClassifyInput {
    if (item.is_string()) return {item.get<std::string>(), std::nullopt};
    if (item.is_array() && item.size() == 2 && item[0].is_string() && item[1].is_string())
      return {item[0].get<std::string>(), item[1].get<std::string>()};
    throw BadRequest("'input' items must be texts or [text, pair] lists of two texts", "input");
  };
  if (in.is_string()) {
    c.inputs.push_back(one(in));
  } else if (in.is_array() && !in.empty() && in.size() <= 256) {
    for (auto& item : in) c.inputs.push_back(one(item));
  } else {
    throw BadRequest("'input' must be a text, or a list of 1 to 256 texts or [text, pair] lists", "input");
  }
  return c;
}

EmbeddingsCall parse_embeddings(const json& body) {
  refuse_unknown(body, {"model", "input", "user", "encoding_format"});
  if (body.contains("encoding_format") && body["encoding_format"] != "float")
    throw BadRequest("'encoding_format' must be \"float\"", "encoding_format");
  return {required_string(body, "model"), strings(body, "input", 256)};
}

json error_body(const std::string& message, const std::string& type, const std::string& param) {
  return {{"error",
           {{"message", message},
            {"type", type},
            {"param", param.empty() ? json() : json(param)},
            {"code", nullptr}}}};
}

json completion_body(const std::string& id, const std::string& model,
                     const std::vector<Completion>& choices) {
  json list = json::array();
  int64_t prompt = 0, produced = 0;
  for (size_t i = 0; i < choices.size(); ++i) {
    const Completion& c = choices[i];
    list.push_back(
        {{"text", c.text}, {"index", i}, {"logprobs", nullptr}, {"finish_reason", c.finish_reason}});
    prompt += c.prompt_tokens;
    produced += int64_t(c.ids.size());
  }
  return {
      {"id", id},
      {"object", "text_completion"},
      {"created", std::time(nullptr)},
      {"model", model},
      {"choices", list},
      {"usage",
       {{"prompt_tokens", prompt}, {"completion_tokens", produced}, {"total_tokens", prompt + produced}}}};
}

json completion_chunk(const std::string& id, const std::string& model, int64_t index, const std::string& text,
                      const std::string& finish_reason) {
  return {{"id", id},
          {"object", "text_completion"},
          {"created", std::time(nullptr)},
          {"model", model},
          {"choices",
           {{{"text", text},
             {"index", index},
             {"logprobs", nullptr},
             {"finish_reason", finish_reason.empty() ? json() : json(finish_reason)}}}}};
}

json classify_body(const std::string& model, const std::vector<Classification>& results) {
  json data = json::array();
  for (size_t i = 0; i < results.size(); ++i) {
    json probs = json::object();
    for (auto& [label, p] : results[i].probabilities) probs[label] = p;
    data.push_back({{"index", i},
                    {"label", results[i].label},
                    {"probability", results[i].probability},
                    {"probabilities", probs}});
  }
  return {{"object", "list"}, {"model", model}, {"data", data}};
}

json embeddings_body(const std::string& model, const Embeddings& e) {
  json data = json::array();
  for (size_t i = 0; i < e.vectors.size(); ++i)
    data.push_back({{"object", "embedding"}, {"index", i}, {"embedding", e.vectors[i]}});
  return {{"object", "list"},
          {"model", model},
          {"data", data},
          {"usage", {{"prompt_tokens", e.tokens}, {"total_tokens", e.tokens}}}};
}

json models_body(const std::vector<ModelInfo>& models, const std::string& base) {
  json data = json::array();
  for (auto& m : models) {
    const bool is_base = m.name == base;
    data.push_back({{"id", m.name},
                    {"object", "model"},
                    {"created", 0},
                    {"owned_by", "deltatune"},
                    {"root", is_base ? m.name : m.path},
                    {"parent", is_base ? json() : json(base)},
                    {"method", m.method},
                    {"task", m.task},
                    {"shares_batch", m.shares_batch}});
  }
  return {{"object", "list"}, {"data", data}};
}

std::string dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

}  // namespace deltatune::serve::api
