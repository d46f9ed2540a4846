// singlequant: the full SingleQuant rotation (paper Eq. 17), in our default reading
// (method-notes.md section 3):  R = (R_A R1_U) (x) (H R2_U), built in this order:
//   1. R_A  : ART on the n1 axis, from the raw activations (section 4);
//   2. H    : normalized Hadamard on the n2 axis (Sylvester for 2^k, no signs);
//   3. R1_U : URT on the n1 axis, from the data rotated by R_A and H (section 5);
//   4. R2_U : URT on the n2 axis, from the data rotated by everything above.
// Each factor's statistics are taken over its population: the n1 factor acts on the
// columns M[:, q] of every token's M = x.reshape(n1, n2) (T * n2 vectors), the n2 factor
// on the rows M[r, :] (T * n1 vectors).
//
// Options (YAML keys; defaults first):
//   components: [art, urt] | [art] | [urt] | []
//   outlier_threshold: 10, max_pairs: 0 (no cap), passes: 1, art_complement: random|identity
//   art_axis: n1|dense        dense: one ART on the full n, before everything else
//   statistic: mean|absmax|rms|mean_abs, target: uniform|flat|flat_positive, sweep: chain|star
//   urt_placement: factors|dense_after   dense_after: one URT on the full n, after the factors
//   hadamard_factor: n2|n1|both|none     (hadamard_side: false means none)
//   hadamard_signs: false, factor_order: r1_r2|r2_r1, composition: semantic|literal
//   kronecker: auto | [n1, n2]
// Where a Hadamard and ART share the n1 axis (hadamard_factor n1|both), H comes first
// (R1 = H R_A R1_U): a Sylvester H after ART maps the balanced pair onto half its outputs
// (section 3), so ART then detects on the H-rotated data.
// `composition: literal` builds the same R_A and R1_U and uses R1 = (R1_U R_A)^T as typed
// in Eq. 17 (R1 = H (R1_U R_A)^T with a Hadamard on n1); R2_U is then built on the data
// rotated by that R1. `factor_order: r2_r1` puts the n2 factor first: R = R2 (x) R1 with
// M = x.reshape(n2, n1).
//
// Recorded metrics: n1, n2, art_detected, art_paired (summed over passes), art_passes_run,
// art_scale (first pass's threshold scale s), urt_givens (Givens rotations in all URTs),
// and every option as opt_* (choices as 0-based indices into the lists above; booleans as
// 0/1), because defaults do not appear in the run's stored config.
#include <ATen/ATen.h>
#include <fmt/format.h>

#include <cmath>
#include <tuple>

#include "core/method.h"
#include "core/random.h"
#include "methods/art_urt.h"
#include "methods/options.h"
#include "rotations/dense.h"
#include "rotations/hadamard.h"
#include "rotations/hadamard_matrices.h"
#include "rotations/kronecker.h"

namespace sqlab {
namespace {

enum class HadamardFactor { n2, n1, both, none };

struct SingleQuantOptions {
  bool art = true;
  bool urt = true;
  ArtOptions art_options;
  bool art_dense = false;
  UrtOptions urt_options;
  bool urt_dense_after = false;
  HadamardFactor hadamard = HadamardFactor::n2;
  bool hadamard_signs = false;
  bool r2_first = false;
  bool literal = false;
  int64_t n1 = 0, n2 = 0;  // 0: auto
  std::string kronecker_where;

  bool hadamard_n1() const { return hadamard == HadamardFactor::n1 || hadamard == HadamardFactor::both; }
  bool hadamard_n2() const { return hadamard == HadamardFactor::n2 || hadamard == HadamardFactor::both; }
};

int index_of(const std::string& value, const std::vector<std::string>& choices) {
  return static_cast<int>(std::find(choices.begin(), choices.end(), value) - choices.begin());
}

const std::vector<std::string> kHadamardChoices{"n2", "n1", "both", "none"};

void parse_components(ConfigReader& reader, SingleQuantOptions& o) {
  if (!reader.has("components")) return;
  const auto components = reader.get<std::vector<std::string>>("components", {});
  o.art = o.urt = false;
  for (const std::string& c : components) {
    bool& flag = c == "art" ? o.art : o.urt;
    if (c != "art" && c != "urt")
      reader.fail("components", fmt::format("unknown component '{}' (valid: art, urt)", c));
    if (flag) reader.fail("components", fmt::format("component '{}' listed twice", c));
    flag = true;
  }
}

void parse_hadamard(ConfigReader& reader, SingleQuantOptions& o) {
  const std::string factor = reader.choice("hadamard_factor", "n2", kHadamardChoices);
  o.hadamard = static_cast<HadamardFactor>(index_of(factor, kHadamardChoices));
  const YAML::Node side = reader.raw("hadamard_side");
  if (side) {
    bool enabled = true;
    try {
      enabled = side.as<bool>();
    } catch (const YAML::Exception&) {
      reader.fail("hadamard_side", "expected a boolean (false: no Hadamard factor; "
                                   "choose the axis with hadamard_factor)");
    }
    if (!enabled) {
      if (reader.has("hadamard_factor") && o.hadamard != HadamardFactor::none)
        reader.fail("hadamard_side", fmt::format("false contradicts hadamard_factor: {}", factor));
      o.hadamard = HadamardFactor::none;
    }
  }
  o.hadamard_signs = reader.get<bool>("hadamard_signs", false);
}

bool has_hadamard(int64_t m) {
  int64_t base = 0, pow2 = 0;
  return hadamard_split(m, &base, &pow2);
}

void parse_kronecker(ConfigReader& reader, SingleQuantOptions& o) {
  o.kronecker_where = reader.where("kronecker");
  std::tie(o.n1, o.n2) = parse_kronecker_option(reader, "kronecker");
  if (o.n1 == 0) return;  // auto
  // The Hadamard side can be checked now; n1 * n2 = n only when the site's width is known.
  for (const auto& [on, m, axis] : {std::tuple{o.hadamard_n1(), o.n1, "n1"}, std::tuple{o.hadamard_n2(), o.n2, "n2"}})
    if (on && !has_hadamard(m))
      reader.fail("kronecker", fmt::format(
          "[{}, {}]: hadamard_factor puts a Hadamard matrix on {}, and there is none of order {} "
          "(need 2^k * m, m in {{1, 12, 20, 28, 36, 40, 52, 60, 108, 140, 156, 172}})",
          o.n1, o.n2, axis, m));
}

SingleQuantOptions parse_options(ConfigReader& reader) {
  SingleQuantOptions o;
  parse_components(reader, o);
  o.art_options = parse_art_options(reader);
  o.art_dense = reader.choice("art_axis", "n1", {"n1", "dense"}) == "dense";
  o.urt_options = parse_urt_options(reader);
  o.urt_dense_after =
      reader.choice("urt_placement", "factors", {"factors", "dense_after"}) == "dense_after";
  parse_hadamard(reader, o);
  o.r2_first = reader.choice("factor_order", "r1_r2", {"r1_r2", "r2_r1"}) == "r2_r1";
  o.literal = reader.choice("composition", "semantic", {"semantic", "literal"}) == "literal";
  parse_kronecker(reader, o);
  return o;
}

// Layout of the Kronecker form R = S (x) F: M = x.reshape(ns, nf); the slow factor S acts
// on the columns M[:, q], the fast factor F on the rows M[r, :]. Populations are computed
// in y's dtype on y's device (the factors live on the CPU; y may be on data.device: cuda);
// undefined factors are the identity.
struct Layout {
  int64_t ns, nf;

  // Rows: the columns of every token's S^T M F, as row vectors (T * nf of length ns).
  at::Tensor slow_population(const at::Tensor& y, const at::Tensor& s, const at::Tensor& f) const {
    const int64_t tokens = y.size(0);
    at::Tensor z = y.reshape({tokens * ns, nf});
    if (f.defined()) z = at::matmul(z, f.to(y.device(), y.scalar_type()));
    z = z.reshape({tokens, ns, nf}).transpose(1, 2).reshape({tokens * nf, ns});
    return s.defined() ? at::matmul(z, s.to(y.device(), y.scalar_type())) : z;
  }
  // Rows: the rows of every token's S^T M F (T * ns of length nf).
  at::Tensor fast_population(const at::Tensor& y, const at::Tensor& s, const at::Tensor& f) const {
    const int64_t tokens = y.size(0);
    at::Tensor z = y.reshape({tokens, ns, nf});
    if (s.defined()) {
      z = at::matmul(z.transpose(1, 2).reshape({tokens * nf, ns}), s.to(y.device(), y.scalar_type()));
      z = z.reshape({tokens, nf, ns}).transpose(1, 2);
    }
    z = z.reshape({tokens * ns, nf});
    return f.defined() ? at::matmul(z, f.to(y.device(), y.scalar_type())) : z;
  }
};

at::Tensor times(const at::Tensor& a, const at::Tensor& b) {
  if (!a.defined()) return b;
  if (!b.defined()) return a;
  return at::matmul(a, b);
}

class SingleQuantMethod : public RotationMethod {
 public:
  explicit SingleQuantMethod(SingleQuantOptions options) : o_(std::move(options)) {}

  bool reads_weights() const override { return false; }  // X only
  RotationPtr fit(const FitContext& context) const override;
  void check_width(int64_t n) const override { factorization(n); }

 private:
  std::pair<int64_t, int64_t> factorization(int64_t n) const;
  at::Tensor hadamard_factor(int64_t m, const FitContext& context, const std::string& axis) const;
  void record_options(FitLog& log) const;

  SingleQuantOptions o_;
};

std::pair<int64_t, int64_t> SingleQuantMethod::factorization(int64_t n) const {
  const bool h1 = o_.hadamard_n1(), h2 = o_.hadamard_n2();
  auto acceptable = [&](int64_t a, int64_t b) {
    return (!h1 || has_hadamard(a)) && (!h2 || has_hadamard(b));
  };
  const char* sides = h1 && h2 ? "n1 and n2" : h1 ? "n1" : "n2";
  if (o_.n1 > 0) {
    if (o_.n1 * o_.n2 != n)
      throw config_error(fmt::format("{}: [{}, {}] does not factor the site width n = {} ({} * {} = {})",
                                     o_.kronecker_where, o_.n1, o_.n2, n, o_.n1, o_.n2, o_.n1 * o_.n2));
    return {o_.n1, o_.n2};
  }
  try {
    if (!h1 && !h2) return balanced_factorization(n);
    return balanced_factorization(n, acceptable);
  } catch (const Error& e) {
    throw config_error(fmt::format("{}: auto ({}): {}", o_.kronecker_where,
                                   h1 || h2 ? fmt::format("Hadamard matrix on {}", sides) : "no Hadamard",
                                   e.what()));
  }
}

at::Tensor SingleQuantMethod::hadamard_factor(int64_t m, const FitContext& context,
                                              const std::string& axis) const {
  at::Tensor h = hadamard_matrix(m);
  if (!o_.hadamard_signs) return h;
  // x D H: a seeded random sign per input coordinate (QuaRot-style).
  at::Generator g = make_generator(context.seed, "singlequant/" + context.site.name + "/signs/" + axis);
  return h * random_signs(m, g).to(at::kDouble).unsqueeze(1);
}

RotationPtr SingleQuantMethod::fit(const FitContext& context) const {
  FitLog& log = context.log;
  const std::string purpose = "singlequant/" + context.site.name;
  const std::string where = "singlequant (site " + context.site.name + ")";
  // Populations in the site's dtype (float32, or float64 in tests); matrices in float64.
  const at::Tensor& x = context.site.X;
  const int64_t n = x.size(1);
  record_options(log);
  const auto [n1, n2] = factorization(n);  // config errors before any work
  log.metric("n1", static_cast<double>(n1));
  log.metric("n2", static_cast<double>(n2));

  RotationPtr before;  // ART on the full n (art_axis: dense)
  at::Tensor y = x;
  if (o_.art && o_.art_dense) {
    const ArtFactor art = build_art_factor(x, o_.art_options, context.seed, purpose + "/art_dense");
    record_art(log, art, "art", where);
    log.metric("art_scale", art.passes.front().scale);
    y = at::matmul(x, art.matrix.to(x.device(), x.scalar_type()));  // the matrix is on the CPU
    before = std::make_unique<DenseRotation>(art.matrix, "art_dense");
  }

  const Layout layout = o_.r2_first ? Layout{n2, n1} : Layout{n1, n2};
  at::Tensor r1, r2;  // undefined: identity
  auto population_of = [&](const at::Tensor& data, bool axis1) {
    const at::Tensor& slow = o_.r2_first ? r2 : r1;
    const at::Tensor& fast = o_.r2_first ? r1 : r2;
    return axis1 != o_.r2_first ? layout.slow_population(data, slow, fast)
                                : layout.fast_population(data, slow, fast);
  };
  auto population = [&](bool axis1) { return population_of(y, axis1); };
  // The mean is linear and every token contributes equally many vectors, so the mean
  // statistic of a population is that of the mean token's population: O(n), not O(T n).
  const bool mean_statistic = o_.urt && o_.urt_options.statistic == UrtStatistic::mean;
  const at::Tensor y_mean = mean_statistic ? at::mean(y, {0}, true, at::kDouble) : at::Tensor();
  auto urt_population = [&](bool axis1) {
    return mean_statistic ? population_of(y_mean, axis1) : population(axis1);
  };

  at::Tensor h1, art_matrix;
  if (o_.hadamard_n1()) r1 = h1 = hadamard_factor(n1, context, "n1");
  if (o_.art && !o_.art_dense) {
    const ArtFactor art = build_art_factor(population(true), o_.art_options, context.seed, purpose + "/art");
    record_art(log, art, "art", where);
    log.metric("art_scale", art.passes.front().scale);
    art_matrix = art.matrix;
    r1 = times(r1, art_matrix);
  }
  if (o_.hadamard_n2()) r2 = hadamard_factor(n2, context, "n2");

  int64_t givens = 0;
  at::Tensor urt1;
  if (o_.urt && !o_.urt_dense_after) {
    const UrtFactor u1 = build_urt_factor(urt_population(true), o_.urt_options);
    urt1 = u1.matrix;
    givens += u1.givens;
  }
  if (o_.literal) {  // R1 = H (R1_U R_A)^T as typed in Eq. 17
    const at::Tensor typed = times(urt1, art_matrix);
    r1 = typed.defined() ? times(h1, typed.t()) : h1;
  } else {
    r1 = times(r1, urt1);
  }
  if (o_.urt && !o_.urt_dense_after) {
    const UrtFactor u2 = build_urt_factor(urt_population(false), o_.urt_options);
    r2 = times(r2, u2.matrix);
    givens += u2.givens;
  }
  if (!r1.defined()) r1 = at::eye(n1, at::kDouble);
  if (!r2.defined()) r2 = at::eye(n2, at::kDouble);

  RotationPtr rotation =
      o_.r2_first ? std::make_unique<KroneckerRotation>(r2, r1, fmt::format("singlequant R2({}) x R1({})", n2, n1))
                  : std::make_unique<KroneckerRotation>(r1, r2, fmt::format("singlequant R1({}) x R2({})", n1, n2));
  if (o_.urt && o_.urt_dense_after) {
    const UrtFactor u = build_urt_factor(rotation->apply(mean_statistic ? y_mean : y), o_.urt_options);
    givens += u.givens;
    rotation = std::make_unique<ComposedRotation>(
        std::move(rotation), std::make_unique<DenseRotation>(u.matrix, "urt_dense"));
  }
  if (o_.urt) log.metric("urt_givens", static_cast<double>(givens));
  if (before) rotation = std::make_unique<ComposedRotation>(std::move(before), std::move(rotation));
  return rotation;
}

void SingleQuantMethod::record_options(FitLog& log) const {
  const ArtOptions& a = o_.art_options;
  const UrtOptions& u = o_.urt_options;
  log.metric("opt_art", o_.art);
  log.metric("opt_urt", o_.urt);
  log.metric("opt_outlier_threshold", a.outlier_threshold);
  log.metric("opt_max_pairs", static_cast<double>(a.max_pairs));
  log.metric("opt_passes", static_cast<double>(a.passes));
  log.metric("opt_art_complement", a.complement == ArtComplement::random ? 0 : 1);
  log.metric("opt_art_axis", o_.art_dense);
  log.metric("opt_statistic", static_cast<double>(u.statistic));
  log.metric("opt_target", static_cast<double>(u.target));
  log.metric("opt_sweep", static_cast<double>(u.sweep));
  log.metric("opt_urt_placement", o_.urt_dense_after);
  log.metric("opt_hadamard_factor", static_cast<double>(o_.hadamard));
  log.metric("opt_hadamard_signs", o_.hadamard_signs);
  log.metric("opt_factor_order", o_.r2_first);
  log.metric("opt_composition", o_.literal);
  log.metric("opt_kronecker_auto", o_.n1 == 0);
}

}  // namespace

void register_singlequant(MethodRegistry& registry) {
  registry.add("singlequant",
               "SingleQuant (Eq. 17): (ART then URT on n1) (x) (Hadamard then URT on n2), Kronecker form",
               [](ConfigReader& options) {
                 return std::make_unique<SingleQuantMethod>(parse_options(options));
               });
}

}  // namespace sqlab
