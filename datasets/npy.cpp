// Dataset `npy`: one site from two NumPy files, `x: FILE.npy` (T x n) and
// `w: FILE.npy` (C_out x n); little-endian float16/32/64, C or Fortran order
// (io/npy.h). Options: x, w (required), name (default "site"), plus the common
// site-file keys (site_file.h).
#include <ATen/ATen.h>
#include <fmt/format.h>

#include <memory>

#include "core/dataset.h"
#include "core/error.h"
#include "datasets/site_file.h"
#include "io/npy.h"

namespace sqlab {
namespace {

class NpyDataset : public Dataset {
 public:
  explicit NpyDataset(ConfigReader& reader) {
    x_path_ = require_existing_file(reader, "x");
    w_path_ = require_existing_file(reader, "w");
    options_ = parse_site_file_options(reader);
  }

  std::vector<Site> load(uint64_t seed) const override { return {finish_site(read(), options_, seed)}; }

  void validate() const override { check_site_values(read(), options_); }

 private:
  RawSite read() const {
    const NpyHeader x = read_npy_header(x_path_);
    const NpyHeader w = read_npy_header(w_path_);
    RawSite raw{options_.name.empty() ? "site" : options_.name, {}, {}, fmt::format("{}: array x", x_path_),
                fmt::format("{}: array w", w_path_)};
    check_site_shapes(raw.name, raw.x_origin, x.shape, raw.w_origin, w.shape, options_);
    raw.X = read_npy(x_path_);
    raw.W = read_npy(w_path_);
    if (raw.X.scalar_type() == at::kHalf) raw.X = raw.X.to(at::kFloat);
    if (raw.W.scalar_type() == at::kHalf) raw.W = raw.W.to(at::kFloat);
    return raw;
  }

  std::string x_path_;
  std::string w_path_;
  SiteFileOptions options_;
};

}  // namespace

void register_npy_dataset(DatasetRegistry& registry) {
  registry.add("npy", "one site from two NumPy files (<f2/<f4/<f8, C or Fortran order); x, w, name, tokens, "
                      "token_sample, dtype",
               [](ConfigReader& options) { return std::make_unique<NpyDataset>(options); });
}

}  // namespace sqlab
