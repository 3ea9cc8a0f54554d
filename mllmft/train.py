"""``mllmft-train``: fine-tune with a strategy, then test on the target and upstream sets.

mllmft-train strategy=full scope=llm data=digits trainer.max_steps=50
mllmft-train -m strategy=full,zeroshot seed=1,2
"""

from mllmft.cli import run_entry_point

main = run_entry_point("train")  # conf/train.yaml: change=fit

if __name__ == "__main__":
    main()
