// Dataset `hdf5`: sites from an HDF5 file (contract.md, "Site files"), as written by
// h5py on the machine that captured them:
//   /X (T x n) and /W (C_out x n) at the root for one site, or
//   /sites/NAME/X and /sites/NAME/W for several (`sites: [NAME, ...]` selects).
// float16, float32 and float64 datasets are read (HDF5 converts float16 itself).
// Options: path (required), sites, plus the common site-file keys (site_file.h).
#include <ATen/ATen.h>
#include <fmt/format.h>
#include <hdf5.h>

#include <algorithm>
#include <cctype>
#include <memory>
#include <mutex>

#include "core/dataset.h"
#include "core/error.h"
#include "core/recorder.h"
#include "datasets/site_file.h"

namespace sqlab {
namespace {

// Closes an HDF5 id at scope exit.
class Id {
 public:
  Id(hid_t id, herr_t (*close)(hid_t)) : id_(id), close_(close) {}
  ~Id() {
    if (id_ >= 0) close_(id_);
  }
  Id(const Id&) = delete;
  Id& operator=(const Id&) = delete;
  hid_t get() const { return id_; }
  bool ok() const { return id_ >= 0; }

 private:
  hid_t id_;
  herr_t (*close_)(hid_t);
};

herr_t keep_innermost(unsigned n, const H5E_error2_t* err, void* data) {
  if (n == 0 && err->desc) *static_cast<std::string*>(data) = err->desc;
  return 0;
}

// The innermost message of the HDF5 error stack (after a failed call), in parentheses.
std::string hdf5_cause() {
  std::string cause;
  H5Ewalk2(H5E_DEFAULT, H5E_WALK_UPWARD, keep_innermost, &cause);
  return cause.empty() ? "" : " (" + cause + ")";
}

// Holds the HDF5 lock and keeps HDF5 from printing its error stack while we probe.
class Hdf5Session {
 public:
  Hdf5Session() : lock_(hdf5_mutex()) {
    H5Eget_auto2(H5E_DEFAULT, &func_, &data_);
    H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
  }
  ~Hdf5Session() { H5Eset_auto2(H5E_DEFAULT, func_, data_); }

 private:
  std::lock_guard<std::mutex> lock_;
  H5E_auto2_t func_ = nullptr;
  void* data_ = nullptr;
};

// "layer2" before "layer10".
bool natural_less(const std::string& a, const std::string& b) {
  size_t i = 0, j = 0;
  while (i < a.size() && j < b.size()) {
    if (std::isdigit(static_cast<unsigned char>(a[i])) && std::isdigit(static_cast<unsigned char>(b[j]))) {
      size_t ie = i, je = j;
      while (ie < a.size() && std::isdigit(static_cast<unsigned char>(a[ie]))) ++ie;
      while (je < b.size() && std::isdigit(static_cast<unsigned char>(b[je]))) ++je;
      const std::string na = a.substr(i, ie - i), nb = b.substr(j, je - j);
      if (na.size() != nb.size()) return na.size() < nb.size();
      if (na != nb) return na < nb;
      i = ie;
      j = je;
    } else {
      if (a[i] != b[j]) return a[i] < b[j];
      ++i;
      ++j;
    }
  }
  return a.size() - i < b.size() - j;
}

const char* class_name(H5T_class_t c) {
  switch (c) {
    case H5T_INTEGER: return "integer";
    case H5T_FLOAT: return "float";
    case H5T_STRING: return "string";
    case H5T_BITFIELD: return "bitfield";
    case H5T_OPAQUE: return "opaque";
    case H5T_COMPOUND: return "compound";
    case H5T_REFERENCE: return "reference";
    case H5T_ENUM: return "enum";
    case H5T_VLEN: return "variable-length";
    case H5T_ARRAY: return "array";
    default: return "unknown";
  }
}

struct Listing {
  std::vector<std::string> items;
};

herr_t list_dataset(hid_t group, const char* name, const H5L_info_t*, void* data) {
  auto* listing = static_cast<Listing*>(data);
  if (listing->items.size() > 40) return 1;  // enough for a message
  const Id object(H5Oopen(group, name, H5P_DEFAULT), H5Oclose);
  if (!object.ok() || H5Iget_type(object.get()) != H5I_DATASET) return 0;
  const Id space(H5Dget_space(object.get()), H5Sclose);
  std::vector<int64_t> shape;
  if (space.ok()) {
    const int rank = H5Sget_simple_extent_ndims(space.get());
    std::vector<hsize_t> dims(std::max(rank, 0));
    if (rank > 0) H5Sget_simple_extent_dims(space.get(), dims.data(), nullptr);
    for (hsize_t d : dims) shape.push_back(static_cast<int64_t>(d));
  }
  listing->items.push_back(fmt::format("/{} {}", name, shape_string(shape)));
  return 0;
}

herr_t list_child(hid_t, const char* name, const H5L_info_t*, void* data) {
  static_cast<std::vector<std::string>*>(data)->push_back(name);
  return 0;
}

// One open file and the questions the dataset asks it. Callers hold an Hdf5Session.
class Hdf5SiteFile {
 public:
  explicit Hdf5SiteFile(const std::string& path) : path_(path), file_(open(path), H5Fclose) {}

  bool exists(const std::string& link) const {
    // Check each prefix: H5Lexists fails on a path whose parent is missing.
    size_t pos = 0;
    while ((pos = link.find('/', pos + 1)) != std::string::npos)
      if (H5Lexists(file_.get(), link.substr(0, pos).c_str(), H5P_DEFAULT) <= 0) return false;
    return H5Lexists(file_.get(), link.c_str(), H5P_DEFAULT) > 0;
  }

  H5I_type_t kind(const std::string& link) const {
    const Id object(H5Oopen(file_.get(), link.c_str(), H5P_DEFAULT), H5Oclose);
    return object.ok() ? H5Iget_type(object.get()) : H5I_BADID;
  }

  // Datasets anywhere in the file, with their shapes.
  std::string contents() const {
    Listing listing;
    H5Lvisit(file_.get(), H5_INDEX_NAME, H5_ITER_INC, list_dataset, &listing);
    return listing.items.empty() ? "no datasets" : list_names(listing.items, 40);
  }

  std::vector<std::string> children(const std::string& group) const {
    std::vector<std::string> names;
    const Id g(H5Gopen2(file_.get(), group.c_str(), H5P_DEFAULT), H5Gclose);
    if (g.ok()) H5Literate(g.get(), H5_INDEX_NAME, H5_ITER_INC, nullptr, list_child, &names);
    std::sort(names.begin(), names.end(), natural_less);
    return names;
  }

  std::string origin(const std::string& link) const { return fmt::format("{}: dataset {}", path_, link); }

  // Checks that `link` is a float dataset and returns its shape (any rank).
  std::vector<int64_t> shape(const std::string& link, const std::string& in_group) const {
    if (!exists(link)) {
      std::vector<std::string> present;
      for (const std::string& child : children(in_group)) present.push_back(child);
      throw config_error(fmt::format("{}: dataset {} is missing ({} holds: {})", path_, link, in_group,
                                     list_names(present)));
    }
    if (kind(link) != H5I_DATASET) throw config_error(fmt::format("{}: {} is not a dataset", path_, link));
    const Id dataset(H5Dopen2(file_.get(), link.c_str(), H5P_DEFAULT), H5Dclose);
    const Id type(H5Dget_type(dataset.get()), H5Tclose);
    const Id space(H5Dget_space(dataset.get()), H5Sclose);
    if (!dataset.ok() || !type.ok() || !space.ok())
      throw config_error(fmt::format("{}: cannot open{}", origin(link), hdf5_cause()));
    const H5T_class_t type_class = H5Tget_class(type.get());
    const size_t size = H5Tget_size(type.get());
    if (type_class != H5T_FLOAT || (size != 2 && size != 4 && size != 8))
      throw config_error(fmt::format("{}: unsupported dtype ({}, {} bytes); supported: float16, float32, float64",
                                     origin(link), class_name(type_class), size));
    const int rank = H5Sget_simple_extent_ndims(space.get());
    std::vector<hsize_t> dims(std::max(rank, 0));
    if (rank > 0) H5Sget_simple_extent_dims(space.get(), dims.data(), nullptr);
    return std::vector<int64_t>(dims.begin(), dims.end());
  }

  // Reads a float dataset (already checked by shape()) as float32, or float64 when
  // stored as float64.
  at::Tensor read(const std::string& link) const {
    const Id dataset(H5Dopen2(file_.get(), link.c_str(), H5P_DEFAULT), H5Dclose);
    const Id type(H5Dget_type(dataset.get()), H5Tclose);
    const Id space(H5Dget_space(dataset.get()), H5Sclose);
    std::vector<hsize_t> dims(2);
    H5Sget_simple_extent_dims(space.get(), dims.data(), nullptr);
    const bool wide = H5Tget_size(type.get()) == 8;
    at::Tensor t = at::empty({static_cast<int64_t>(dims[0]), static_cast<int64_t>(dims[1])},
                             wide ? at::kDouble : at::kFloat);
    if (H5Dread(dataset.get(), wide ? H5T_NATIVE_DOUBLE : H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT,
                t.data_ptr()) < 0)
      throw config_error(fmt::format("{}: cannot read the data{}", origin(link), hdf5_cause()));
    return t;
  }

 private:
  static hid_t open(const std::string& path) {
    if (H5Fis_hdf5(path.c_str()) <= 0)
      throw config_error(fmt::format("{}: not an HDF5 file{}", path, hdf5_cause()));
    const hid_t id = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
    if (id < 0) throw config_error(fmt::format("{}: cannot open as HDF5{}", path, hdf5_cause()));
    return id;
  }

  std::string path_;
  Id file_;
};

class Hdf5Dataset : public MultiSiteFileDataset {
 public:
  using MultiSiteFileDataset::MultiSiteFileDataset;

 private:
  // The sites to read: (name, group holding X and W).
  std::vector<std::pair<std::string, std::string>> layout(const Hdf5SiteFile& file) const {
    const bool root = file.exists("/X") || file.exists("/W");
    const bool grouped = file.exists("/sites");
    if (root && grouped)
      throw config_error(fmt::format("{}: holds both a root site (/X, /W) and /sites; keep one layout", path_));
    if (!root && !grouped)
      throw config_error(fmt::format("{}: no site found: expected /X and /W at the root, or /sites/NAME/X and "
                                     "/sites/NAME/W; the file holds: {}", path_, file.contents()));
    if (root) {
      if (!selected_.empty())
        throw config_error(fmt::format("{}: `sites` selects among /sites/NAME, but {} holds one site at the root "
                                       "(/X, /W)", sites_where_, path_));
      return {{options_.name.empty() ? "site" : options_.name, "/"}};
    }
    if (!options_.name.empty())
      throw config_error(fmt::format("{}: `name` is for a single site at the root; the sites under /sites keep "
                                     "their group names", path_));
    if (file.kind("/sites") != H5I_GROUP) throw config_error(fmt::format("{}: /sites is not a group", path_));
    const std::vector<std::string> present = file.children("/sites");
    if (present.empty()) throw config_error(fmt::format("{}: /sites is empty", path_));
    std::vector<std::pair<std::string, std::string>> result;
    for (const std::string& name : selected_.empty() ? present : selected_) {
      if (std::find(present.begin(), present.end(), name) == present.end())
        throw config_error(fmt::format("{}: site '{}' not found in {} (present under /sites: {})", sites_where_, name,
                                       path_, list_names(present)));
      result.emplace_back(name, "/sites/" + name);
    }
    return result;
  }

  std::vector<RawSite> read() const override {
    Hdf5Session session;
    const Hdf5SiteFile file(path_);
    std::vector<RawSite> sites;
    for (const auto& [name, group] : layout(file)) {
      const std::string x = group == "/" ? "/X" : group + "/X";
      const std::string w = group == "/" ? "/W" : group + "/W";
      RawSite raw{name, {}, {}, file.origin(x), file.origin(w)};
      const std::vector<int64_t> x_shape = file.shape(x, group);
      const std::vector<int64_t> w_shape = file.shape(w, group);
      check_site_shapes(name, raw.x_origin, x_shape, raw.w_origin, w_shape, options_);
      raw.X = file.read(x);
      raw.W = file.read(w);
      sites.push_back(std::move(raw));
    }
    return sites;
  }

};

}  // namespace

void register_hdf5_dataset(DatasetRegistry& registry) {
  registry.add("hdf5", "site file in HDF5: /X and /W, or /sites/NAME/{X,W} (float16/32/64); path, sites, tokens, "
                       "token_sample, dtype",
               [](ConfigReader& options) { return std::make_unique<Hdf5Dataset>(options); });
}

}  // namespace sqlab
