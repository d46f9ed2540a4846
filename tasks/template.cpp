#include "tasks/template.h"

#include <fmt/format.h>

#include <cctype>
#include <regex>
#include <vector>

#include "core/error.h"

namespace sqlab {
namespace {

struct Field {
  std::string path;
  std::vector<std::pair<std::string, std::string>> filters;  // name, argument
};

const char* const kFilters[] = {"strip", "lstrip", "capitalize", "before", "after",
                                "but_last_word", "last_word", "hellaswag", "spaces"};

bool known_filter(const std::string& name) {
  for (const char* f : kFilters)
    if (name == f) return true;
  return false;
}

bool takes_argument(const std::string& name) { return name == "before" || name == "after"; }

Field parse_field(const std::string& inside, const std::string& where) {
  Field field;
  size_t start = 0;
  bool first = true;
  while (true) {
    const size_t bar = inside.find('|', start);
    const std::string part = inside.substr(start, bar == std::string::npos ? std::string::npos : bar - start);
    if (first) {
      field.path = part;
      if (part.empty()) throw config_error(fmt::format("{}: empty field name in {{{}}}", where, inside));
      first = false;
    } else {
      const size_t colon = part.find(':');
      std::string name = part.substr(0, colon);
      std::string arg = colon == std::string::npos ? "" : part.substr(colon + 1);
      if (!known_filter(name))
        throw config_error(fmt::format("{}: unknown filter '{}' in {{{}}} (valid: strip, lstrip, capitalize, "
                                       "before:X, after:X, but_last_word, last_word, hellaswag, spaces)",
                                       where, name, inside));
      if (takes_argument(name) == (colon == std::string::npos) || (takes_argument(name) && arg.empty()))
        throw config_error(fmt::format("{}: filter '{}' {} an argument in {{{}}}", where, name,
                                       takes_argument(name) ? "needs" : "takes no", inside));
      field.filters.emplace_back(std::move(name), std::move(arg));
    }
    if (bar == std::string::npos) break;
    start = bar + 1;
  }
  return field;
}

bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }

std::string strip(const std::string& s, bool right) {
  size_t a = 0, b = s.size();
  while (a < b && is_space(s[a])) ++a;
  while (right && b > a && is_space(s[b - 1])) --b;
  return s.substr(a, b - a);
}

std::string replace_all(std::string s, const std::string& from, const std::string& to) {
  for (size_t pos = s.find(from); pos != std::string::npos; pos = s.find(from, pos + to.size()))
    s.replace(pos, from.size(), to);
  return s;
}

std::vector<std::string> split_spaces(const std::string& s) {  // Python's str.split(' ')
  std::vector<std::string> parts;
  size_t start = 0;
  while (true) {
    const size_t space = s.find(' ', start);
    parts.push_back(s.substr(start, space == std::string::npos ? std::string::npos : space - start));
    if (space == std::string::npos) return parts;
    start = space + 1;
  }
}

std::string apply_filter(const std::string& name, const std::string& arg, const std::string& s,
                         const std::string& where) {
  if (name == "strip") return strip(s, true);
  if (name == "lstrip") return strip(s, false);
  if (name == "capitalize") {
    std::string out = s;
    for (size_t i = 0; i < out.size(); ++i)
      if (static_cast<unsigned char>(out[i]) < 0x80)
        out[i] = static_cast<char>(i == 0 ? std::toupper(static_cast<unsigned char>(out[i]))
                                          : std::tolower(static_cast<unsigned char>(out[i])));
    return out;
  }
  if (name == "before" || name == "after") {
    const size_t at = s.find(arg);
    if (at == std::string::npos)
      throw Error(fmt::format("{}: filter {}:{} finds no '{}' in \"{}\"", where, name, arg, arg, s));
    return name == "before" ? s.substr(0, at) : s.substr(at + arg.size());
  }
  if (name == "but_last_word" || name == "last_word") {
    std::vector<std::string> words = split_spaces(s);
    if (name == "last_word") return words.back();
    words.pop_back();
    std::string out;
    for (size_t i = 0; i < words.size(); ++i) out += (i ? " " : "") + words[i];
    return out;
  }
  if (name == "hellaswag") {
    static const std::regex bracketed("\\[.*?\\]");
    std::string t = strip(s, true);
    t = replace_all(t, " [title]", ". ");
    t = std::regex_replace(t, bracketed, "");
    return replace_all(t, "  ", " ");
  }
  return replace_all(s, "_", " ");  // spaces
}

template <typename OnField>
std::string walk(const std::string& text, const std::string& where, OnField on_field) {
  std::string out;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if ((c == '{' || c == '}') && i + 1 < text.size() && text[i + 1] == c) {
      out += c;
      ++i;
      continue;
    }
    if (c == '}') throw config_error(fmt::format("{}: unmatched '}}' in \"{}\" (write }}}} for a brace)", where, text));
    if (c != '{') {
      out += c;
      continue;
    }
    const size_t close = text.find('}', i);
    if (close == std::string::npos)
      throw config_error(fmt::format("{}: unclosed '{{' in \"{}\" (write {{{{ for a brace)", where, text));
    out += on_field(parse_field(text.substr(i + 1, close - i - 1), where));
    i = close;
  }
  return out;
}

}  // namespace

const nlohmann::json& document_node(const nlohmann::json& document, const std::string& path, const std::string& where) {
  const nlohmann::json* node = &document;
  size_t start = 0;
  while (true) {
    const size_t dot = path.find('.', start);
    const std::string key = path.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
    const nlohmann::json* next = nullptr;
    if (node->is_object() && node->contains(key)) {
      next = &(*node)[key];
    } else if (node->is_array() && !key.empty() && key.find_first_not_of("0123456789") == std::string::npos &&
               std::stoull(key) < node->size()) {
      next = &(*node)[std::stoull(key)];
    }
    if (!next) throw Error(fmt::format("{}: the document has no field '{}'", where, path));
    node = next;
    if (dot == std::string::npos) break;
    start = dot + 1;
  }
  return *node;
}

std::string document_field(const nlohmann::json& document, const std::string& path, const std::string& where) {
  const nlohmann::json& node = document_node(document, path, where);
  return node.is_string() ? node.get<std::string>() : node.dump();
}

std::string render_template(const std::string& text, const nlohmann::json& document, const std::string& where) {
  return walk(text, where, [&](const Field& f) {
    std::string value = document_field(document, f.path, where);
    for (const auto& [name, arg] : f.filters) value = apply_filter(name, arg, value, where);
    return value;
  });
}

void check_template(const std::string& text, const std::string& where) {
  walk(text, where, [](const Field&) { return std::string(); });
}

int64_t code_points(const std::string& text) {
  int64_t n = 0;
  for (unsigned char c : text) n += (c & 0xC0) != 0x80;
  return n;
}

}  // namespace sqlab
