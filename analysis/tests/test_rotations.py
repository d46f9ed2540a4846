"""analysis.rotations: every stored form's apply agrees with its dense matrix.  (Against
sqlab's own Rotation::dense(): tests/test_stored_forms.cpp.)"""

import unittest

import numpy as np

from analysis import rotations


def orthogonal(n, rng):
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    return q * np.sign(np.diag(r))


class StoredForms(unittest.TestCase):
    def setUp(self):
        rng = np.random.default_rng(0)
        h12 = np.array(  # a Hadamard matrix of order 12 (Paley, q = 11) as H_base
            [[1] * 12] + [[1] + [1 if ((j - i) % 11) in (0, 1, 3, 4, 5, 9) else -1 for j in range(11)]
                          for i in range(11)], dtype=float)
        h12[1:, 1:] = np.where(np.eye(11) > 0, -1.0, h12[1:, 1:])
        self.factors = {
            "dense": {"R": orthogonal(12, rng)},
            "kronecker": {"R1": orthogonal(3, rng), "R2": orthogonal(4, rng)},
            "hadamard_compact": {"H_base": h12, "signs": rng.choice([-1.0, 1.0], size=(1, 96))},
            "block_diagonal": {"blocks": np.concatenate([orthogonal(4, rng) for _ in range(3)])},
            "permutation": {"source": rng.permutation(10).astype(float).reshape(1, -1)},
            "transform": {"T": np.diag(rng.uniform(0.5, 2, 8)), "T_w": np.diag(rng.uniform(0.5, 2, 8))},
        }
        self.rng = rng

    def test_forms_are_recognized(self):
        for form, factors in self.factors.items():
            self.assertEqual(rotations.form_of(factors), form)
        with self.assertRaisesRegex(ValueError, "no known stored form"):
            rotations.form_of({"R1": np.eye(2)})

    def test_apply_equals_dense(self):
        for form, factors in self.factors.items():
            n = rotations.size(factors)
            x = self.rng.standard_normal((5, n))
            np.testing.assert_allclose(rotations.apply(factors, x), x @ rotations.dense(factors), atol=1e-12,
                                       err_msg=form)

    def test_orthogonal_forms_are_orthogonal(self):
        for form, factors in self.factors.items():
            if form == "transform":
                continue
            r = rotations.dense(factors)
            np.testing.assert_allclose(r.T @ r, np.eye(len(r)), atol=1e-12, err_msg=form)

    def test_sylvester_convention(self):
        s = rotations.sylvester(8)
        for i in range(8):
            for j in range(8):
                self.assertEqual(s[i, j], (-1) ** bin(i & j).count("1"))


if __name__ == "__main__":
    unittest.main()
