"""``mllmft-merge``: merge a fine-tuned result into its base model, then test it as mllmft-train does.

    mllmft-merge merge=wise_ft merge.alpha=0.5 finetuned=logs/train/runs/<run>
    mllmft-merge -m merge=wise_ft merge.alpha=0,0.25,0.5,0.75,1 finetuned=...   # the WiSE-FT curve
    mllmft-merge merge=dare finetuned=.../export export=merged                 # and write the HF directory

The base is ``model=`` (θ0); the target and upstream sets, the zero-shot reference row and
results.json (``run.merge``: the method and its knobs, its seconds and extra bytes) are mllmft-train's.
The merge itself is ``mllmft.changes.Merge``.
"""

from mllmft.cli import run_entry_point

main = run_entry_point("merge")  # conf/merge.yaml: change=merge

if __name__ == "__main__":
    main()
