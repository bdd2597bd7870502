"""Training, in the order the loop (electra_dist/train.py) uses it:

guard        the output directory: writable, room for a checkpoint, locked against a second run
resolve      the config meets its weights (init_from) and data (datacheck): validated, frozen
build        processes → model (kernels applied), optimizer, schedule, DeepSpeed engine → loader
checkpoints  save / resume / final model / PREEMPTED marker, each at its own cadence
step         one optimizer step over its micro-batches; the non-finite check
metrics      window sums on device → metrics.jsonl, MLflow, console, at log steps only
evaluate     held-out RTD metrics at evaluation steps
signals      SIGUSR1 / SIGTERM → checkpoint and exit
optim        AdamW groups and the official LR schedule (also used by fine-tuning and bench)
flops        training FLOPs per token, peak TFLOP/s per device; memory: per-GPU memory of a step
"""
