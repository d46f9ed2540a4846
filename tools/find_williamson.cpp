// find_williamson: search for four circulant +-1 sequences A, B, C, D of odd length n whose
// periodic autocorrelations sum to zero at every nonzero shift,
//   PAF_A(s) + PAF_B(s) + PAF_C(s) + PAF_D(s) = 0   for s = 1 .. n-1,
// i.e. circulants with A A^T + B B^T + C C^T + D D^T = 4n I. Plugged into the Goethals-Seidel
// array they give a Hadamard matrix of order 4n (rotations/hadamard_matrices.cpp embeds the result
// for n = 39 and n = 43, the orders 156 and 172 that have no Paley construction).
// When the symmetry group H contains -1 the sequences are symmetric, i.e. Williamson matrices.
//
// Build: g++ -std=c++17 -O2 -o /tmp/find_williamson tools/find_williamson.cpp
// Run:   /tmp/find_williamson 43 [max_orbits] [--williamson]
//        max_orbits (default 16) bounds the free signs per sequence (2^max_orbits candidates);
//        --williamson only tries groups H containing -1, so the result is symmetric (Williamson).
// Prints the four first rows as strings of '+'/'-' and the time the search took.
//
// Method (symmetry reduction plus meet in the middle, as in the literature on supplementary
// difference sets "with symmetry" and on Williamson matrices):
//  1. Pick a cyclic subgroup H of the units of Z_n and only consider sequences that are constant
//     on the orbits of H acting on Z_n by multiplication. Their PAF and power spectral density
//     (PSD) are then constant on orbits too, so there are few sequences and few constraints.
//     Subgroups are tried from largest (fewest free signs) to smallest.
//  2. Keep only sequences with PSD(k) <= 4n at every frequency (the four PSDs sum to exactly 4n)
//     and positive row sum (negating a sequence keeps its PAF). Row sums r_A..r_D are odd with
//     r_A^2 + r_B^2 + r_C^2 + r_D^2 = 4n, so each decomposition of 4n into four odd squares fixes
//     which candidate classes can be combined.
//  3. Meet in the middle: store PAF_A + PAF_B for all pairs (A, B) whose PSDs sum to <= 4n,
//     sorted by a hash; for each pair (C, D) look up -(PAF_C + PAF_D).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <set>
#include <string>
#include <vector>

namespace {

using Seq = std::vector<int>;

int gcd(int a, int b) { return b == 0 ? a : gcd(b, a % b); }

// Cyclic subgroups <g> of the units of Z_n, each as a sorted element list, largest first.
std::vector<std::vector<int>> cyclic_subgroups(int n) {
  std::set<std::vector<int>> unique;
  for (int g = 1; g < n; ++g) {
    if (gcd(g, n) != 1) continue;
    std::vector<int> h{1};
    for (int x = g % n; x != 1; x = x * g % n) h.push_back(x);
    std::sort(h.begin(), h.end());
    unique.insert(h);
  }
  std::vector<std::vector<int>> out(unique.begin(), unique.end());
  std::stable_sort(out.begin(), out.end(),
                   [](const auto& a, const auto& b) { return a.size() > b.size(); });
  return out;
}

// Partition of Z_n (or of its nonzero part) into orbits of x -> h*x, h in group.
std::vector<std::vector<int>> orbits(const std::vector<int>& group, int n, bool skip_zero) {
  std::vector<int> seen(n, 0);
  std::vector<std::vector<int>> out;
  for (int x = skip_zero ? 1 : 0; x < n; ++x) {
    if (seen[x]) continue;
    std::vector<int> orbit;
    for (int h : group) {
      int y = h * x % n;
      if (!seen[y]) seen[y] = 1, orbit.push_back(y);
    }
    out.push_back(orbit);
  }
  return out;
}

struct Candidate {
  Seq seq;
  std::vector<int> paf;     // PAF at one representative shift per class
  std::vector<double> psd;  // PSD at the same representatives used as frequencies
};

int paf(const Seq& a, int s) {
  int n = static_cast<int>(a.size()), sum = 0;
  for (int i = 0; i < n; ++i) sum += a[i] * a[(i + s) % n];
  return sum;
}

double psd(const Seq& a, int k) {
  int n = static_cast<int>(a.size());
  double re = 0, im = 0;
  for (int j = 0; j < n; ++j) {
    double t = 2 * M_PI * static_cast<double>(j) * k / n;
    re += a[j] * std::cos(t);
    im += a[j] * std::sin(t);
  }
  return re * re + im * im;
}

// All orbit-constant sequences with positive row sum and PSD <= 4n, grouped by row sum.
std::vector<std::vector<Candidate>> candidates(int n, const std::vector<std::vector<int>>& orbs,
                                               const std::vector<int>& reps) {
  std::vector<std::vector<Candidate>> by_sum(n + 1);
  const double bound = 4.0 * n + 1e-6;
  for (uint64_t mask = 0; mask < (uint64_t{1} << orbs.size()); ++mask) {
    Seq a(n);
    for (size_t o = 0; o < orbs.size(); ++o)
      for (int x : orbs[o]) a[x] = (mask >> o & 1) ? -1 : 1;
    int row_sum = 0;
    for (int v : a) row_sum += v;
    if (row_sum < 0) continue;
    Candidate c{a, {}, {}};
    bool ok = true;
    for (int k : reps) {
      c.psd.push_back(psd(a, k));
      if (c.psd.back() > bound) {
        ok = false;
        break;
      }
      c.paf.push_back(paf(a, k));
    }
    if (ok) by_sum[row_sum].push_back(std::move(c));
  }
  return by_sum;
}

uint64_t hash_of(const std::vector<int>& key) {
  uint64_t h = 1469598103934665603ull;
  for (int v : key) h = (h ^ static_cast<uint64_t>(v + 1000)) * 1099511628211ull;
  return h;
}

bool psd_fits(const Candidate& a, const Candidate& b, int n) {
  for (size_t k = 0; k < a.psd.size(); ++k)
    if (a.psd[k] + b.psd[k] > 4.0 * n + 1e-6) return false;
  return true;
}

std::vector<int> paf_sum(const Candidate& a, const Candidate& b, int sign) {
  std::vector<int> key(a.paf.size());
  for (size_t k = 0; k < key.size(); ++k) key[k] = sign * (a.paf[k] + b.paf[k]);
  return key;
}

struct Entry {
  uint64_t hash;
  uint32_t i, j;
  bool operator<(const Entry& o) const { return hash < o.hash; }
};

// Meet in the middle for one row-sum decomposition (r[0..3]); fills out on success.
bool match(const std::vector<std::vector<Candidate>>& by_sum, const int r[4], int n,
           std::vector<Seq>* out) {
  const auto &ca = by_sum[r[0]], &cb = by_sum[r[1]], &cc = by_sum[r[2]], &cd = by_sum[r[3]];
  std::vector<Entry> table;
  for (uint32_t i = 0; i < ca.size(); ++i)
    for (uint32_t j = (r[0] == r[1] ? i : 0); j < cb.size(); ++j)
      if (psd_fits(ca[i], cb[j], n)) table.push_back({hash_of(paf_sum(ca[i], cb[j], 1)), i, j});
  std::sort(table.begin(), table.end());
  for (uint32_t i = 0; i < cc.size(); ++i) {
    for (uint32_t j = (r[2] == r[3] ? i : 0); j < cd.size(); ++j) {
      if (!psd_fits(cc[i], cd[j], n)) continue;
      std::vector<int> target = paf_sum(cc[i], cd[j], -1);
      auto range = std::equal_range(table.begin(), table.end(), Entry{hash_of(target), 0, 0});
      for (auto it = range.first; it != range.second; ++it) {
        if (paf_sum(ca[it->i], cb[it->j], 1) != target) continue;
        *out = {ca[it->i].seq, cb[it->j].seq, cc[i].seq, cd[j].seq};
        return true;
      }
    }
  }
  return false;
}

// Decompositions 4n = r0^2 + r1^2 + r2^2 + r3^2 with odd 0 < r0 <= r1 <= r2 <= r3.
std::vector<std::vector<int>> odd_square_decompositions(int n) {
  std::vector<std::vector<int>> out;
  for (int a = 1; a * a <= 4 * n; a += 2)
    for (int b = a; a * a + b * b <= 4 * n; b += 2)
      for (int c = b; a * a + b * b + c * c <= 4 * n; c += 2) {
        int rest = 4 * n - a * a - b * b - c * c;
        int d = static_cast<int>(std::lround(std::sqrt(rest)));
        if (d >= c && d * d == rest) out.push_back({a, b, c, d});
      }
  return out;
}

bool verify(const std::vector<Seq>& s, int n) {
  for (int shift = 1; shift < n; ++shift) {
    int sum = 0;
    for (const Seq& a : s) sum += paf(a, shift);
    if (sum != 0) return false;
  }
  return true;
}

std::string signs(const Seq& a) {
  std::string s;
  for (int v : a) s += v > 0 ? '+' : '-';
  return s;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s n [max_orbits] [--williamson]\n", argv[0]);
    return 2;
  }
  const int n = std::atoi(argv[1]);
  const int max_orbits = argc > 2 ? std::atoi(argv[2]) : 16;
  const bool symmetric_only = argc > 3 && std::string(argv[3]) == "--williamson";
  if (n < 3 || n % 2 == 0) {
    std::fprintf(stderr, "n must be odd and >= 3\n");
    return 2;
  }
  auto start = std::chrono::steady_clock::now();
  auto elapsed = [&] {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  };
  for (const auto& h : cyclic_subgroups(n)) {
    auto orbs = orbits(h, n, false);
    if (static_cast<int>(orbs.size()) > max_orbits) continue;
    if (symmetric_only && !std::binary_search(h.begin(), h.end(), n - 1)) continue;
    // PAF(s) = PAF(-s), so shift classes are orbits of the group generated by H and -1.
    std::vector<int> h_pm = h;
    for (int x : h) h_pm.push_back(n - x);
    std::vector<int> reps;
    for (const auto& o : orbits(h_pm, n, true)) reps.push_back(o[0]);
    auto by_sum = candidates(n, orbs, reps);
    std::string elements;
    for (int x : h) elements += " " + std::to_string(x);
    std::printf("H = {%s } (order %zu): %zu orbits, %zu shift classes  [%.1fs]\n",
                elements.c_str(), h.size(), orbs.size(), reps.size(), elapsed());
    for (const auto& r : odd_square_decompositions(n)) {
      std::vector<Seq> found;
      if (!match(by_sum, r.data(), n, &found)) continue;
      std::printf("found with row sums %d %d %d %d after %.1fs, verified: %s\n", r[0], r[1], r[2],
                  r[3], elapsed(), verify(found, n) ? "yes" : "NO");
      for (const Seq& a : found) std::printf("%s\n", signs(a).c_str());
      return 0;
    }
  }
  std::printf("no solution found after %.1fs\n", elapsed());
  return 1;
}
