"""Training, in the order the loop (electra_dist/train.py) uses it:

build        config → processes → checked data → model, optimizer, schedule, DeepSpeed engine → loader
step         one optimizer step over its micro-batches; the non-finite check
metrics      window sums on device → metrics.jsonl, MLflow, console, at log steps only
checkpoints  save / resume / final model / PREEMPTED marker
signals      SIGUSR1 / SIGTERM → checkpoint and exit
optim        AdamW groups and the official LR schedule (also used by fine-tuning and bench)
flops        training FLOPs per token, peak TFLOP/s per device
"""
