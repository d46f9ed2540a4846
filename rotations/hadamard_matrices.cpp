#include "rotations/hadamard_matrices.h"

#include <algorithm>
#include <map>
#include <set>
#include <mutex>
#include <string>
#include <utility>

#include "core/error.h"

namespace sqlab {
namespace {

using Matrix = std::vector<int8_t>;  // row-major, square

// ---------------------------------------------------------------------------------------------
// GF(q) for q = p^k, k <= 3 (q = 25, 27, 49, 121, 125, ... for the Paley constructions).
// Elements are encoded as integers 0..q-1 whose base-p digits are polynomial coefficients;
// arithmetic is modulo a monic irreducible polynomial of degree k.

class FiniteField {
 public:
  FiniteField(int p, int k) : p_(p), k_(k), q_(1) {
    for (int i = 0; i < k; ++i) q_ *= p;
    modulus_ = irreducible_polynomial();
    is_square_.assign(q_, false);
    for (int x = 1; x < q_; ++x) is_square_[multiply(x, x)] = true;
  }

  int order() const { return q_; }

  int subtract(int a, int b) const {
    std::vector<int> da = digits(a), db = digits(b);
    for (int i = 0; i < k_; ++i) da[i] = (da[i] - db[i] + p_) % p_;
    return from_digits(da);
  }

  // Legendre symbol generalised to GF(q): 0 for 0, +1 for nonzero squares, -1 otherwise.
  int quadratic_character(int a) const { return a == 0 ? 0 : (is_square_[a] ? 1 : -1); }

 private:
  std::vector<int> digits(int a) const {
    std::vector<int> d(k_);
    for (int i = 0; i < k_; ++i, a /= p_) d[i] = a % p_;
    return d;
  }

  int from_digits(const std::vector<int>& d) const {
    int a = 0;
    for (int i = k_ - 1; i >= 0; --i) a = a * p_ + d[i];
    return a;
  }

  int multiply(int a, int b) const {
    std::vector<int> da = digits(a), db = digits(b), prod(2 * k_ - 1, 0);
    for (int i = 0; i < k_; ++i)
      for (int j = 0; j < k_; ++j) prod[i + j] = (prod[i + j] + da[i] * db[j]) % p_;
    // Reduce with x^k = -(c_{k-1} x^{k-1} + ... + c_0), highest power first.
    for (int deg = 2 * k_ - 2; deg >= k_; --deg) {
      int c = prod[deg];
      prod[deg] = 0;
      for (int i = 0; i < k_; ++i)
        prod[deg - k_ + i] = ((prod[deg - k_ + i] - c * modulus_[i]) % p_ + p_) % p_;
    }
    prod.resize(k_);
    return from_digits(prod);
  }

  // Low coefficients c_0..c_{k-1} of a monic irreducible x^k + ...: for 2 <= k <= 3 a
  // polynomial is irreducible iff it has no root in GF(p). For k = 1 (prime fields) products
  // never need reducing, so any modulus will do.
  std::vector<int> irreducible_polynomial() const {
    if (k_ == 1) return {0};
    if (k_ > 3) throw Error("hadamard: GF(p^k) only implemented for k <= 3");
    for (int code = 0; code < q_; ++code) {
      std::vector<int> c = digits(code);
      bool has_root = false;
      for (int x = 0; x < p_ && !has_root; ++x) {
        int value = 1;  // Horner on x^k + c_{k-1} x^{k-1} + ... + c_0
        for (int i = k_ - 1; i >= 0; --i) value = (value * x + c[i]) % p_;
        has_root = value == 0;
      }
      if (!has_root) return c;
    }
    throw Error("hadamard: no irreducible polynomial found");  // unreachable
  }

  int p_, k_, q_;
  std::vector<int> modulus_;
  std::vector<bool> is_square_;
};

// ---------------------------------------------------------------------------------------------
// Paley constructions from the Jacobsthal matrix Q[a][b] = chi(a - b) of GF(q).

std::vector<int> jacobsthal(const FiniteField& f) {
  const int q = f.order();
  std::vector<int> jq(q * q);
  for (int a = 0; a < q; ++a)
    for (int b = 0; b < q; ++b) jq[a * q + b] = f.quadratic_character(f.subtract(a, b));
  return jq;
}

// Paley I, q = 3 mod 4: Q is skew, so S = [[0, 1^T], [-1, Q]] is a skew conference matrix and
// H = I + S satisfies H H^T = I + S S^T = (q + 1) I.
Matrix paley_1(const FiniteField& f) {
  const int q = f.order(), m = q + 1;
  std::vector<int> jq = jacobsthal(f);
  Matrix h(m * m);
  for (int i = 0; i < m; ++i)
    for (int j = 0; j < m; ++j) {
      int s = i == 0 ? (j == 0 ? 0 : 1) : (j == 0 ? -1 : jq[(i - 1) * q + (j - 1)]);
      h[i * m + j] = static_cast<int8_t>(s + (i == j ? 1 : 0));
    }
  return h;
}

// Paley II, q = 1 mod 4: C = [[0, 1^T], [1, Q]] is a symmetric conference matrix; replacing
// 0 by [[1, -1], [-1, -1]] and +-1 by +-[[1, 1], [1, -1]] gives order 2(q + 1).
Matrix paley_2(const FiniteField& f) {
  const int q = f.order(), c_order = q + 1, m = 2 * c_order;
  std::vector<int> jq = jacobsthal(f);
  const int zero_block[2][2] = {{1, -1}, {-1, -1}};
  const int sign_block[2][2] = {{1, 1}, {1, -1}};
  Matrix h(m * m);
  for (int i = 0; i < c_order; ++i)
    for (int j = 0; j < c_order; ++j) {
      int c = (i == 0 || j == 0) ? (i == j ? 0 : 1) : jq[(i - 1) * q + (j - 1)];
      for (int r = 0; r < 2; ++r)
        for (int s = 0; s < 2; ++s)
          h[(2 * i + r) * m + 2 * j + s] =
              static_cast<int8_t>(c == 0 ? zero_block[r][s] : c * sign_block[r][s]);
    }
  return h;
}

// Sylvester doubling [[H, H], [H, -H]].
Matrix sylvester_double(const Matrix& h, int m) {
  Matrix out(4 * m * m);
  for (int i = 0; i < m; ++i)
    for (int j = 0; j < m; ++j) {
      int8_t v = h[i * m + j];
      out[i * 2 * m + j] = out[i * 2 * m + m + j] = out[(m + i) * 2 * m + j] = v;
      out[(m + i) * 2 * m + m + j] = static_cast<int8_t>(-v);
    }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Goethals-Seidel array for orders 4w with no Paley construction (156 = 4*39, 172 = 4*43).
// Four circulant +-1 matrices A, B, C, D of order w whose periodic autocorrelations sum to zero
// at every nonzero shift satisfy A A^T + B B^T + C C^T + D D^T = 4w I, and then
//   [[ A,    BR,    CR,    DR   ],
//    [-BR,   A,     D^T R, -C^T R],
//    [-CR,  -D^T R, A,     B^T R],
//    [-DR,   C^T R, -B^T R, A   ]]      (R = back-diagonal identity)
// is Hadamard. The first rows were found by tools/find_williamson.cpp (sequences constant on
// orbits of a small multiplicative subgroup H of Z_w, meet in the middle on the periodic
// autocorrelation); each search took under 0.01 s on a 2-core machine:
//   w = 39: `find_williamson 39`, H = {1, 14, 16, 22, 29, 35}, row sums 1, 3, 5, 11 (H does not
//           contain -1, so these are Goethals-Seidel sequences, not symmetric).
//   w = 43: `find_williamson 43 16 --williamson`, H = {1, 6, 7, 36, 37, 42}, row sums 5, 7, 7, 7;
//           the sequences are symmetric, i.e. genuine Williamson matrices (the GS array works
//           for them too, so both orders share one code path).
const char* const kGs39[4] = {
    "--++++---++--+---+-+-+-++++++--+++----+",
    "-+++-+---+--+-+-+--+-++-+--+++++++-++--",
    "+-+-++-++-++-----+-+++-+++--+--++++--++",
    "+++--+-++--++-+-+--++++-+---++++++++++-",
};
const char* const kWilliamson43[4] = {
    "--+++----+-++-++--++++++++--++-++-+----+++-",
    "++-++++++----+-+--++-++-++--+-+----++++++-+",
    "+---++--++++-+-+++-++--++-+++-+-++++--++---",
    "+++-+-++--+-+-++++-+----+-++++-+-+--++-+-++",
};

// Entry (i, j) of X, XR or X^T R for the circulant X[i][j] = x[(j - i) mod w] with first row x:
// XR[i][j] = X[i][w-1-j] and X^T R[i][j] = X[w-1-j][i].
int circulant_entry(const char* row, int w, int i, int j, bool transpose, bool reverse) {
  if (reverse) j = w - 1 - j;
  if (transpose) std::swap(i, j);
  return row[((j - i) % w + w) % w] == '+' ? 1 : -1;
}

Matrix goethals_seidel(const char* const rows[4], int w) {
  struct Block {
    int seq;  // 0..3 = A..D
    int sign;
    bool transpose, reverse;
  };
  // Block layout of the array above.
  const Block layout[4][4] = {
      {{0, 1, false, false}, {1, 1, false, true}, {2, 1, false, true}, {3, 1, false, true}},
      {{1, -1, false, true}, {0, 1, false, false}, {3, 1, true, true}, {2, -1, true, true}},
      {{2, -1, false, true}, {3, -1, true, true}, {0, 1, false, false}, {1, 1, true, true}},
      {{3, -1, false, true}, {2, 1, true, true}, {1, -1, true, true}, {0, 1, false, false}},
  };
  const int m = 4 * w;
  Matrix h(m * m);
  for (int bi = 0; bi < 4; ++bi)
    for (int bj = 0; bj < 4; ++bj) {
      const Block& b = layout[bi][bj];
      for (int i = 0; i < w; ++i)
        for (int j = 0; j < w; ++j)
          h[(bi * w + i) * m + bj * w + j] = static_cast<int8_t>(
              b.sign * circulant_entry(rows[b.seq], w, i, j, b.transpose, b.reverse));
    }
  return h;
}

// ---------------------------------------------------------------------------------------------

// Which rule builds order m, tried in this order (the first that applies is used):
//   1             the 1 x 1 matrix
//   table         Goethals-Seidel from the Williamson-type sequences above (156, 172)
//   Paley I       q = m - 1 a prime power p^k (k <= 3), q = 3 mod 4
//   Paley II      q = m / 2 - 1 a prime power p^k (k <= 3), q = 1 mod 4
//   doubling      [[H, H], [H, -H]] of a constructible m / 2
//   Kronecker     H_a (x) H_b for constructible a, b >= 4 with a b = m (smallest a first)
// Orders up to kMaxBaseOrder are considered (a base of 2048 x 2048 int8 is 4 MiB).
constexpr int64_t kMaxBaseOrder = 2048;

// q = p^k with p prime and 1 <= k <= 3 (what FiniteField implements).
bool small_prime_power(int64_t q, int* p, int* k) {
  if (q < 2) return false;
  int64_t base = 2;
  while (base * base <= q && q % base != 0) ++base;
  if (q % base != 0) base = q;  // q is prime
  int64_t rest = q;
  int exponent = 0;
  while (rest % base == 0) {
    rest /= base;
    ++exponent;
  }
  if (rest != 1 || exponent > 3) return false;
  *p = static_cast<int>(base);
  *k = exponent;
  return true;
}

struct Rule {
  enum Kind { none, one, table, paley1, paley2, doubling, kronecker } kind = none;
  int64_t a = 0;  // Paley: q; doubling: m / 2; Kronecker: the first factor
  int p = 0, k = 0;
};

Rule rule_for(int64_t m) {
  Rule r;
  if (m == 1) return {Rule::one};
  if (m < 4 || m % 4 != 0 || m > kMaxBaseOrder) return r;
  if (m == 156 || m == 172) return {Rule::table, m / 4};
  if (small_prime_power(m - 1, &r.p, &r.k) && (m - 1) % 4 == 3) {
    r.kind = Rule::paley1;
    r.a = m - 1;
    return r;
  }
  if (small_prime_power(m / 2 - 1, &r.p, &r.k) && (m / 2 - 1) % 4 == 1) {
    r.kind = Rule::paley2;
    r.a = m / 2 - 1;
    return r;
  }
  if ((m / 2) % 4 == 0 && rule_for(m / 2).kind != Rule::none) return {Rule::doubling, m / 2};
  for (int64_t a = 4; a * a <= m; a += 4)
    if (m % a == 0 && (m / a) % 4 == 0 && rule_for(a).kind != Rule::none && rule_for(m / a).kind != Rule::none)
      return {Rule::kronecker, a};
  return r;
}

Matrix kronecker_product(const Matrix& x, int64_t a, const Matrix& y, int64_t b) {
  const int64_t m = a * b;
  Matrix out(static_cast<size_t>(m * m));
  for (int64_t i = 0; i < a; ++i)
    for (int64_t j = 0; j < a; ++j)
      for (int64_t r = 0; r < b; ++r)
        for (int64_t s = 0; s < b; ++s)
          out[(i * b + r) * m + j * b + s] = static_cast<int8_t>(x[i * a + j] * y[r * b + s]);
  return out;
}

Matrix build(int64_t m) {
  const Rule r = rule_for(m);
  switch (r.kind) {
    case Rule::one: return Matrix{1};
    case Rule::table: return m == 156 ? goethals_seidel(kGs39, 39) : goethals_seidel(kWilliamson43, 43);
    case Rule::paley1: return paley_1(FiniteField(r.p, r.k));
    case Rule::paley2: return paley_2(FiniteField(r.p, r.k));
    case Rule::doubling: return sylvester_double(build(r.a), static_cast<int>(r.a));
    case Rule::kronecker: return kronecker_product(build(r.a), r.a, build(m / r.a), m / r.a);
    case Rule::none: break;
  }
  return Matrix{};
}

const std::set<int64_t>& base_order_set() {
  static const std::set<int64_t> orders(hadamard_base_orders().begin(), hadamard_base_orders().end());
  return orders;
}

bool is_base_order(int64_t m) { return base_order_set().count(m) > 0; }

std::string unsupported_message(int64_t m) {
  int64_t odd = m;
  while (odd > 0 && odd % 2 == 0) odd /= 2;
  return "hadamard: no Hadamard matrix of order " + std::to_string(m) + " is known to sqlab (its odd part " +
         std::to_string(odd) + " needs a base of order 4*" + std::to_string(odd) + " = " + std::to_string(4 * odd) +
         " or 8*" + std::to_string(odd) + ", ...: sqlab builds bases up to order " + std::to_string(kMaxBaseOrder) +
         " by Paley I/II, doubling, Kronecker products and two Goethals-Seidel tables; `sqlab list hadamard` "
         "shows them)";
}

}  // namespace

const std::vector<int64_t>& hadamard_base_orders() {
  // For each odd part o, the smallest constructible o * 2^j (j >= 2): what a split
  // n = 2^k * m needs (a larger multiple would only leave a smaller power of two).
  static const std::vector<int64_t> orders = [] {
    std::vector<int64_t> list = {1};
    for (int64_t odd = 3; 4 * odd <= kMaxBaseOrder; odd += 2)
      for (int64_t m = 4 * odd; m <= kMaxBaseOrder; m *= 2)
        if (rule_for(m).kind != Rule::none) {
          list.push_back(m);
          break;
        }
    std::sort(list.begin(), list.end());
    return list;
  }();
  return orders;
}

std::string hadamard_construction(int64_t m) {
  const Rule r = rule_for(m);
  switch (r.kind) {
    case Rule::one: return "1";
    case Rule::table: return "Goethals-Seidel, w = " + std::to_string(r.a);
    case Rule::paley1: return "Paley I, q = " + std::to_string(r.a);
    case Rule::paley2: return "Paley II, q = " + std::to_string(r.a);
    case Rule::doubling: return "doubling of " + std::to_string(r.a);
    case Rule::kronecker: return std::to_string(r.a) + " (x) " + std::to_string(m / r.a);
    case Rule::none: break;
  }
  return "";
}

std::vector<int8_t> hadamard_base_matrix(int64_t m) {
  if (!is_base_order(m)) {
    if (rule_for(m).kind == Rule::none) throw config_error(unsupported_message(m));
    throw config_error("hadamard: " + std::to_string(m) + " is not a base order (a larger power of two splits off)");
  }
  // Callers ask repeatedly (one rotation per layer); build each order once.
  static std::mutex mutex;
  static std::map<int64_t, Matrix> cache;
  std::lock_guard<std::mutex> lock(mutex);
  auto it = cache.find(m);
  if (it == cache.end()) it = cache.emplace(m, build(m)).first;
  return it->second;
}

bool hadamard_split(int64_t n, int64_t* m, int64_t* pow2) {
  if (n < 1) return false;
  int64_t p = 1;
  while (n % (2 * p) == 0) p *= 2;  // largest power of two dividing n
  for (; p >= 1; p /= 2) {
    if (!is_base_order(n / p)) continue;
    *m = n / p;
    *pow2 = p;
    return true;
  }
  return false;
}

}  // namespace sqlab
