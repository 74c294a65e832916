#include "train/svg.h"

#include <cstdio>

namespace deltatune::train::svg {

std::string escape(const std::string& text) {
  std::string out;
  for (char c : text) {
    if (c == '&')
      out += "&amp;";
    else if (c == '<')
      out += "&lt;";
    else if (c == '>')
      out += "&gt;";
    else
      out += c;
  }
  return out;
}

namespace {
std::string start_tag(const std::string& tag, const Attributes& attributes) {
  std::string out = "<" + tag;
  for (const auto& [name, value] : attributes) out += " " + name + "=\"" + value + "\"";
  return out;
}
}  // namespace

std::string element(const std::string& tag, const Attributes& attributes) {
  return start_tag(tag, attributes) + "/>";
}

std::string element(const std::string& tag, const Attributes& attributes, const std::string& body) {
  return start_tag(tag, attributes) + ">" + body + "</" + tag + ">";
}

std::string document(double width, double height, const std::string& content) {
  char size[64];
  std::snprintf(size, sizeof size, "width=\"%.0f\" height=\"%.0f\"", width, height);
  return std::string("<svg xmlns=\"http://www.w3.org/2000/svg\" ") + size +
         " font-family=\"sans-serif\" font-size=\"11\">\n" +
         element("rect", {{"width", "100%"}, {"height", "100%"}, {"fill", "white"}}) + "\n" + content +
         "</svg>\n";
}

}  // namespace deltatune::train::svg
