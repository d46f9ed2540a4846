// The forms in which a fitted rotation is stored: the run file's /rotations/SITE/ group and
// `sqlab export` hold a rotation's factors() (core/rotation.h), one form per rotation type,
// and each form says how to rebuild the matrix. analysis/rotations.py is the same table in
// numpy (tests/test_stored_forms.cpp checks that the two agree).
#pragma once

#include <ATen/ATen.h>

#include <map>
#include <string>
#include <vector>

namespace sqlab {

struct StoredForm {
  std::string name;                  // e.g. "hadamard_compact"
  std::vector<std::string> tensors;  // the factor names that make up the form, sorted
  std::string layout;                // the exact reconstruction, written into exported files
};

// Every form: dense, kronecker, hadamard_compact, block_diagonal, permutation, transform.
const std::vector<StoredForm>& stored_forms();

// The form whose tensors are exactly the keys of `factors`; throws sqlab::Error naming the
// tensors when none is.
const StoredForm& stored_form_of(const std::map<std::string, at::Tensor>& factors);

// The n x n matrix a row maps by (x -> x R), float64: R for an orthogonal form, T for a
// transform (whose weights map by T_w instead). Dense, so n^2 * 8 bytes.
at::Tensor dense_from_factors(const std::map<std::string, at::Tensor>& factors);

}  // namespace sqlab
