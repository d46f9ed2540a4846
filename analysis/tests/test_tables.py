"""MMLU's acc pooled from its four groups' runs (analysis.tables.pooled_records)."""

import math
import random
import unittest

from analysis import tables
from analysis.load import Run


def _run(label, task, metrics, seed=0, status="complete", shots="5"):
    return Run(run_id="{}-{}".format(label, task), label=label, method=label, seed=seed, status=status, path="",
               point={"eval.tasks": "[{}]".format(task), "eval.num_fewshot": shots},
               metrics={task + "." + k: v for k, v in metrics.items()})


class PooledGroups(unittest.TestCase):
    def test_pooled_accuracy_is_the_mean_and_sample_stderr_over_all_questions(self):
        rng = random.Random(3)
        scores = [[rng.random() < 0.3 for _ in range(n)] for n in (40, 75, 12, 101)]
        parts = [(sum(s) / len(s), len(s)) for s in scores]
        everything = [x for s in scores for x in s]
        n = len(everything)
        mean = sum(everything) / n
        sample_sd = math.sqrt(sum((x - mean) ** 2 for x in everything) / (n - 1))
        acc, stderr, count = tables.pooled_accuracy(parts)
        self.assertEqual(count, n)
        self.assertAlmostEqual(acc, mean, places=12)
        self.assertAlmostEqual(stderr, sample_sd / math.sqrt(n), places=12)

    def test_records_pool_complete_methods_and_mark_missing_groups(self):
        counts = dict(zip(tables.MMLU_GROUPS, (3153, 4705, 3077, 3107)))
        runs = []
        for label, acc in (("rtn", 0.25), ("quarot", 0.30)):
            for task, n in counts.items():
                runs.append(_run(label, task, {"acc": acc, "acc_fp": 0.20, "examples": n}))
        runs.append(_run("duquant", "mmlu_stem", {"acc": 0.5, "acc_fp": 0.2, "examples": 3153}))  # one group so far
        runs.append(_run("spinquant", "mmlu_stem", {"acc": 0.5, "acc_fp": 0.2, "examples": 3153}, status="partial"))
        records = tables.pooled_records(runs)
        self.assertEqual([r["label"] for r in records], ["full precision", "rtn", "quarot", "duquant"])
        self.assertEqual(records[1]["mmlu_stem"], "25.00")
        self.assertEqual(records[1]["eval.num_fewshot"], "5")
        _, stderr, n = tables.pooled_accuracy([(0.30, c) for c in counts.values()])
        self.assertEqual(n, 14042)
        self.assertEqual(records[2]["mmlu"], "30.00 ± {:.2f} (14042)".format(100 * stderr))
        self.assertTrue(records[0]["mmlu"].startswith("20.00 ± "))
        self.assertEqual(records[3]["mmlu_stem"], "50.00")
        self.assertEqual(records[3]["mmlu_humanities"], "-")
        self.assertEqual(records[3]["mmlu"], "-")
        self.assertIn("| quarot |", tables.markdown(records))


if __name__ == "__main__":
    unittest.main()
