"""``mllmft-eval``: evaluate a backbone (zero-shot, or a checkpoint) on the target and upstream sets.

mllmft-eval                                   # the configured backbone, as loaded
mllmft-eval model.checkpoint=/path/to/hf_dir  # any HF checkpoint directory
mllmft-eval ckpt_path=logs/.../last.ckpt      # a training checkpoint of mllmft-train
"""

from mllmft.cli import run_entry_point

main = run_entry_point("eval")  # conf/eval.yaml: change=evaluate

if __name__ == "__main__":
    main()
