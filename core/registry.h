// Name -> factory tables for methods and datasets. Registration is explicit
// (methods/builtin.cpp, datasets/builtin.cpp): self-registering statics in a static
// library are silently dropped by the linker.
#pragma once

#include <fmt/format.h>

#include <algorithm>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/config.h"
#include "core/error.h"

namespace sqlab {

template <class Base>
class Registry {
 public:
  // The factory reads its options from the reader; unknown options are errors.
  using Factory = std::function<std::unique_ptr<Base>(ConfigReader& options)>;
  struct Entry {
    std::string name;
    std::string description;
    Factory make;
  };

  explicit Registry(std::string kind) : kind_(std::move(kind)) {}

  void add(const std::string& name, const std::string& description, Factory make) {
    if (entries_.count(name)) throw Error(fmt::format("{} '{}' registered twice", kind_, name));
    entries_[name] = Entry{name, description, std::move(make)};
  }

  bool contains(const std::string& name) const { return entries_.count(name) > 0; }

  // Builds `name` from `options`; checks that every option key was understood.
  std::unique_ptr<Base> create(const std::string& name, ConfigReader& options) const {
    auto it = entries_.find(name);
    if (it == entries_.end()) throw config_error(unknown_message(name));
    std::unique_ptr<Base> object = it->second.make(options);
    options.finish();
    return object;
  }

  std::string unknown_message(const std::string& name) const {
    return fmt::format("unknown {} '{}' (valid: {})", kind_, name, fmt::join(names(), ", "));
  }

  std::vector<std::string> names() const {
    std::vector<std::string> result;
    for (const auto& item : entries_) result.push_back(item.first);
    return result;
  }

  std::vector<Entry> entries() const {
    std::vector<Entry> result;
    for (const auto& item : entries_) result.push_back(item.second);
    return result;
  }

 private:
  std::string kind_;
  std::map<std::string, Entry> entries_;
};

}  // namespace sqlab
