"""Downstream evaluation of a pre-trained encoder, on transformers' Trainer, as ELECTRA is judged.

tasks     labeled data of four kinds (classification, regression, token, qa) from JSONL, CoNLL, SQuAD JSON
encode    tokenization per kind, the Auto class, outputs decoded into labels, scores, trivial baselines
qa        SQuAD windows over long contexts (document stride) and n-best span decoding with the null answer
metrics   each kind's official metrics (scikit-learn, scipy, seqeval; SQuAD's evaluation script)
model     the transformers directory and tokenizer of `--model`, layer-wise LR decay groups, size defaults
run       `finetune`: seeds, `--lr auto` on a dev split, the best seed saved for the Auto classes
glue      `electra-dist glue`: the GLUE distribution's nine tasks, the paper's settings, the dev table
"""

from electra_dist.finetune.run import Hyper, Result, finetune
from electra_dist.finetune.tasks import Split, Task, load_task

__all__ = ["Hyper", "Result", "Split", "Task", "finetune", "load_task"]
