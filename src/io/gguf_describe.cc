// A GGUF file listed for people: what `deltatune inspect model.gguf` prints.
#include <sstream>

#include "deltatune/gguf.h"

namespace deltatune::gguf {

std::string describe(const File& f, size_t max_items) {
  std::ostringstream out;
  out << "GGUF v" << f.version << ", " << f.metadata.size() << " metadata keys, " << f.tensors.size()
      << " tensors, alignment " << f.alignment << ", data at byte " << f.data_offset << "\n\nmetadata:\n";
  for (const auto& [key, value] : f.metadata) {
    const std::string type = value.type == ValueType::Array ? "array" : value_type_name(value.type);
    out << "  " << key << " (" << type << ") = " << value.display(max_items) << "\n";
  }
  out << "\ntensors:\n";
  uint64_t bytes = 0;
  for (const TensorInfo& t : f.tensors) {
    out << "  " << t.name << "  " << traits(t.type).name << " [";
    const std::vector<int64_t> shape = t.shape();
    for (size_t i = 0; i < shape.size(); ++i) out << (i ? ", " : "") << shape[i];
    out << "]  offset " << t.offset << ", " << t.bytes << " bytes\n";
    bytes += t.bytes;
  }
  out << "  total " << bytes << " bytes of tensor data\n";
  return out.str();
}

}  // namespace deltatune::gguf
