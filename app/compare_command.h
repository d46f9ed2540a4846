// `sqlab compare DIR_A DIR_B [...] [--metric NAME]... [--format table|markdown|json] [--force]`:
// today's results against last week's, matched by label and sweep point.
#pragma once

#include <string>
#include <vector>

namespace sqlab {

int command_compare(const std::vector<std::string>& args);

}  // namespace sqlab
