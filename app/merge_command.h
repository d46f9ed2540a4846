// `sqlab merge OUT DIR...`: joins the results directories of shards (`--shard K/N`)
// into one, refusing runs whose configurations disagree.
#pragma once

#include <string>
#include <vector>

namespace sqlab {

int command_merge(const std::vector<std::string>& args);

}  // namespace sqlab
