// nlohmann's json values are destroyed recursively, so a hostile file nested a million
// levels deep would overflow the stack: readers check the nesting first (safetensors
// headers, Hugging Face config.json).
#pragma once

#include <cstddef>

namespace sqlab {

// The deepest {}/[] nesting of JSON text, counting only brackets outside strings.
inline int json_nesting_depth(const char* text, size_t size) {
  int depth = 0, deepest = 0;
  bool in_string = false;
  for (size_t i = 0; i < size; ++i) {
    const char c = text[i];
    if (in_string) {
      if (c == '\\') ++i;
      else if (c == '"') in_string = false;
    } else if (c == '"') {
      in_string = true;
    } else if (c == '{' || c == '[') {
      if (++depth > deepest) deepest = depth;
    } else if (c == '}' || c == ']') {
      --depth;
    }
  }
  return deepest;
}

}  // namespace sqlab
