#pragma once
// Request bodies of the HTTP API read into engine requests, and the replies written, in OpenAI's
// shapes (deltatune/serve_http.h). A wrong field is a BadRequest naming it.
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "deltatune/serve.h"

namespace deltatune::serve::api {

// Parses a body; BadRequest when it is not a JSON object.
nlohmann::json parse_body(const std::string& body);

struct CompletionCall {
  std::vector<std::string> prompts;
  int64_t n = 1;  // completions per prompt (completion i of a prompt samples with seed + i)
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage
  CompletionRequest request;   // the prompt left empty
};
CompletionCall parse_completion(const nlohmann::json& body);

struct ClassifyCall {
  std::string model;
  std::vector<ClassifyInput> inputs;
};
ClassifyCall parse_classify(const nlohmann::json& body);

struct EmbeddingsCall {
  std::string model;
  std::vector<std::string> inputs;
};
EmbeddingsCall parse_embeddings(const nlohmann::json& body);

// POST /v1/deltas: {"name": ..., "path": ...}, both non-empty strings.
struct DeltaLoadCall {
  std::string name, path;
};
DeltaLoadCall parse_delta_load(const nlohmann::json& body);

// {"error": {"message", "type", "param", "code"}}.
nlohmann::json error_body(const std::string& message, const std::string& type, const std::string& param = "");

nlohmann::json completion_body(const std::string& id, const std::string& model,
                               const std::vector<Completion>& choices);
// One server-sent event's JSON for a piece of choice `index`'s text (finish_reason null until the end).
nlohmann::json completion_chunk(const std::string& id, const std::string& model, int64_t index,
                                const std::string& text, const std::string& finish_reason);
nlohmann::json classify_body(const std::string& model, const std::vector<Classification>& results);
nlohmann::json embeddings_body(const std::string& model, const Embeddings& e);
nlohmann::json models_body(const std::vector<ModelInfo>& models, const std::string& base);

// JSON text that never throws on invalid UTF-8 (replaced).
std::string dump(const nlohmann::json& j);

}  // namespace deltatune::serve::api
