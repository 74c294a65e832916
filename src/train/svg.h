// A small SVG writer for the plots deltatune draws (a run's curves, a sweep's bars): elements written
// from attribute lists, text escaped, one document frame. No plotting library is needed to look at them.
#pragma once

#include <string>
#include <utility>
#include <vector>

namespace deltatune::train::svg {

// Attribute names and values, written in this order; values are written as given (numbers already
// formatted by the caller, text already escaped).
using Attributes = std::vector<std::pair<std::string, std::string>>;

// `text` with &, < and > escaped, for element content and attribute values.
std::string escape(const std::string& text);

// <tag a="v" .../>
std::string element(const std::string& tag, const Attributes& attributes);
// <tag a="v" ...>body</tag>
std::string element(const std::string& tag, const Attributes& attributes, const std::string& body);

// A whole document: width x height pixels, sans-serif 11px text on a white background, then `content`.
std::string document(double width, double height, const std::string& content);

}  // namespace deltatune::train::svg
