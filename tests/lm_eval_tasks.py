"""Local lm-eval task definitions over small JSON files, written by the tests (the hub is not needed)."""

from __future__ import annotations

import json
from pathlib import Path

QUESTIONS = [
    ("What is the capital of France?", ["Paris", "London", "Rome", "Berlin"], 0),
    ("How many days are there in a week?", ["five", "seven", "ten", "twelve"], 1),
    ("Which planet is closest to the sun?", ["Venus", "Earth", "Mercury", "Mars"], 2),
    (
        "Who wrote the novel about the haunted hotel?",
        ["a farmer", "a musician", "a scientist", "a writer"],
        3,
    ),
    ("Which of the following is a prime number?", ["4", "6", "7", "9"], 2),
    ("Where does the river flow?", ["to the sea", "to the hills", "to the town", "to the bridge"], 0),
]
TEXTS = [
    "The river flows from the hills to the sea. In spring the water is high and cold.",
    "Science is the patient work of asking questions and testing answers.",
    "Music has been part of every human culture that we know. People sing while they work, "
    "when they celebrate, and when they mourn. Instruments made of wood, bone, metal and string "
    "have been found in ancient graves.",
    "Farmers along its banks grow wheat, corn, apples and potatoes.",
    # the tiny random model tends to repeat the last token: a continuation it predicts greedily
    "The river flows to the the.",
]

TASKS = {
    "rwku_t_mc": """\
task: rwku_t_mc
dataset_path: json
dataset_kwargs:
  data_files:
    train: {dir}/mc.jsonl
    test: {dir}/mc.jsonl
test_split: test
fewshot_split: train
num_fewshot: 2
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_target: label
doc_to_choice: "{{{{choices}}}}"
metric_list:
  - metric: acc
  - metric: acc_norm
""",
    "rwku_t_gen": """\
task: rwku_t_gen
dataset_path: json
dataset_kwargs:
  data_files:
    test: {dir}/mc.jsonl
test_split: test
output_type: generate_until
doc_to_text: "Q: {{{{question}}}}\\nA:"
doc_to_target: "{{{{choices[label]}}}}"
generation_kwargs:
  until: ["\\n\\n", ":::::"]
  max_gen_toks: 24
  do_sample: false
metric_list:
  - metric: exact_match
""",
    "rwku_t_ll": """\
task: rwku_t_ll
dataset_path: json
dataset_kwargs:
  data_files:
    test: {dir}/text.jsonl
test_split: test
output_type: loglikelihood
doc_to_text: "{{{{prefix}}}}"
doc_to_target: " {{{{word}}}}"
metric_list:
  - metric: perplexity
  - metric: acc
""",
    "rwku_t_roll": """\
task: rwku_t_roll
dataset_path: json
dataset_kwargs:
  data_files:
    test: {dir}/text.jsonl
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list:
  - metric: word_perplexity
  - metric: byte_perplexity
  - metric: bits_per_byte
""",
}


def write_tasks(folder: Path) -> Path:
    """Write the data files and task YAMLs into ``folder``; return it (for ``--lm-eval-include``)."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "mc.jsonl", "w", encoding="utf-8") as fh:
        for q, choices, label in QUESTIONS:
            fh.write(json.dumps({"question": q, "choices": choices, "label": label}) + "\n")
    with open(folder / "text.jsonl", "w", encoding="utf-8") as fh:
        for text in TEXTS:
            prefix, _, word = text.rstrip(".").rpartition(" ")
            fh.write(json.dumps({"text": text, "prefix": prefix, "word": word}) + "\n")
    for name, body in TASKS.items():
        (folder / f"{name}.yaml").write_text(body.format(dir=folder.resolve()), encoding="utf-8")
    return folder
