"""lm-evaluation-harness itself on the first documents of each task: its prompts (from its own
task YAML and Python, fed the local split files instead of the Hugging Face hub) and its
log-likelihoods of SmolLM2-135M-Instruct (its Hugging Face backend, HFLM, on the GGUF file
dequantized by transformers). tests/test_tasks.cpp checks sqlab's specs and scoring against
them.

    python tools/zero_shot_reference.py MODEL.gguf TASKS_DIR tests/fixtures/tasks/smollm2_lm_eval.json

Needs a Python with torch, transformers, gguf and lm-eval (a venv; the tests do not):
made with lm-eval 0.4.13, transformers 5.25.0, torch 2.15.0 (CPU).
"""

import csv
import glob
import json
import os
import sys

import datasets
import lm_eval.api.task
from lm_eval.api.instance import Instance
from lm_eval.models.huggingface import HFLM
from lm_eval.tasks import TaskManager, get_task_dict

sys.path.insert(0, os.path.dirname(__file__))
from smollm2_reference import load_model, load_tokenizer  # noqa: E402

DOCS = 4  # per task


def jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def local_docs(tasks_dir):
    """(dataset path, name) -> the split's documents in the Hugging Face schema lm-eval reads."""
    d = lambda *p: os.path.join(tasks_dir, *p)  # noqa: E731
    piqa = jsonl(d("piqa", "valid.jsonl"))
    labels = open(d("piqa", "valid-labels.lst")).read().split()
    piqa = [dict(goal=x["goal"], sol1=x["sol1"], sol2=x["sol2"], label=int(l)) for x, l in zip(piqa, labels)]

    def arc(name):
        return [dict(id=x["id"], question=x["question"]["stem"], answerKey=x["answerKey"],
                     choices=dict(text=[c["text"] for c in x["question"]["choices"]],
                                  label=[c["label"] for c in x["question"]["choices"]]))
                for x in jsonl(d("arc", name))]

    boolq = [dict(question=x["question"], passage=x["passage"], idx=i, label=int(str(x["label"]).lower() == "true"))
             for i, x in enumerate(jsonl(d("boolq", "val.jsonl")))]
    wino = [dict(sentence=x["sentence"], option1=x["option1"], option2=x["option2"], answer=x["answer"])
            for x in jsonl(d("winogrande", "dev.jsonl"))]
    lambada = [dict(text=x["text"]) for x in jsonl(d("lambada", "lambada_test.jsonl"))]
    obqa = [dict(id=x["id"], question_stem=x["question"]["stem"], answerKey=x["answerKey"],
                 choices=dict(text=[c["text"] for c in x["question"]["choices"]],
                              label=[c["label"] for c in x["question"]["choices"]]))
            for x in jsonl(d("openbookqa", "test.jsonl"))]
    # llama.cpp's text form: "activity_label: ctx" (ctx_a and ctx_b already joined).
    lines = "".join(open(p).read() for p in sorted(glob.glob(d("hellaswag", "hellaswag_val_full.part*.txt"))))
    lines = lines.rstrip("\n").split("\n")
    hella = []
    for i in range(0, len(lines), 6):
        activity, ctx = lines[i].split(": ", 1)
        hella.append(dict(activity_label=activity, ctx_a=ctx, ctx_b="", ctx=ctx, label=lines[i + 1],
                          endings=lines[i + 2:i + 6]))

    def mmlu(split, subject):
        with open(d("mmlu", split, "{}_{}.csv".format(subject, split))) as f:
            return [dict(question=r["question"], subject=subject, answer=int(r["answer"]),
                         choices=[r["choice0"], r["choice1"], r["choice2"], r["choice3"]])
                    for r in csv.DictReader(f)]

    return {
        ("baber/piqa", None): piqa,
        ("allenai/ai2_arc", "ARC-Easy"): arc("ARC-Easy-Test.jsonl"),
        ("allenai/ai2_arc", "ARC-Challenge"): arc("ARC-Challenge-Test.jsonl"),
        ("aps/super_glue", "boolq"): boolq,
        ("allenai/winogrande", "winogrande_xl"): wino,
        ("EleutherAI/lambada_openai", "default"): lambada,
        ("allenai/openbookqa", "main"): obqa,
        ("Rowan/hellaswag", None): hella,
        ("cais/mmlu", "abstract_algebra"): (mmlu("test", "abstract_algebra"), mmlu("dev", "abstract_algebra")),
    }


def install_local_datasets(tasks_dir):
    docs = local_docs(tasks_dir)

    def load_dataset(path=None, name=None, **kwargs):
        found = docs.get((path, name), docs.get((path, None)))
        if found is None:
            raise SystemExit("no local data for {} {}".format(path, name))
        test, dev = found if isinstance(found, tuple) else (found, found)
        ds = datasets.Dataset.from_list(test)
        return datasets.DatasetDict({"train": ds, "validation": ds, "test": ds,
                                     "dev": datasets.Dataset.from_list(dev)})

    lm_eval.api.task.datasets.load_dataset = load_dataset


def main(model_path, tasks_dir, out_path):
    install_local_datasets(tasks_dir)
    model = load_model(model_path)
    tokenizer = load_tokenizer(model_path)
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=4, add_bos_token=False)
    names = ["piqa", "arc_easy", "arc_challenge", "boolq", "winogrande", "lambada_openai", "openbookqa",
             "hellaswag", "mmlu_abstract_algebra"]
    tasks = get_task_dict(names, TaskManager())
    out = {"lm_eval": __import__("importlib.metadata").metadata.version("lm-eval"),
           "model": os.path.basename(model_path), "docs_per_task": DOCS, "max_length": lm.max_length, "tasks": {}}
    for label, name, shots in [(n, n, 0) for n in names] + [("mmlu_abstract_algebra_5shot", "mmlu_abstract_algebra", 5)]:
        task = tasks[name]
        task.set_config("num_fewshot", shots)
        task.build_all_requests(limit=DOCS, rank=0, world_size=1)
        instances = sorted(task.instances, key=lambda i: (i.doc_id, i.idx))
        results = lm.loglikelihood([Instance("loglikelihood", i.doc, i.arguments, i.idx) for i in instances])
        out["tasks"][label] = [dict(doc=i.doc_id, choice=i.idx, context=i.arguments[0], continuation=i.arguments[1],
                                    loglikelihood=ll, greedy=bool(g)) for i, (ll, g) in zip(instances, results)]
        print(label, len(instances), "requests")
    with open(out_path, "w") as f:
        json.dump(out, f, indent=1, ensure_ascii=False)
        f.write("\n")


if __name__ == "__main__":
    main(*sys.argv[1:4])
