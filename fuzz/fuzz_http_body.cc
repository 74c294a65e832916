// Request bodies of `deltatune serve`'s HTTP API, as clients send them: the first byte picks the
// endpoint (completions, classify, embeddings, loading a delta); the rest is the body, parsed and
// read into the engine's request the way the server does before anything runs.
#include "fuzz_input.h"
#include "serve/openai_api.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  namespace api = deltatune::serve::api;
  const std::string body(fuzz::bytes_of(data + 1, size - 1));
  fuzz::refuse_or_read([&] {
    const nlohmann::json j = api::parse_body(body);
    switch (data[0] % 4) {
      case 0:
        (void)api::parse_completion(j);
        break;
      case 1:
        (void)api::parse_classify(j);
        break;
      case 2:
        (void)api::parse_embeddings(j);
        break;
      default:
        (void)api::parse_delta_load(j);
    }
  });
  return 0;
}
