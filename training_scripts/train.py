"""Train an hf-cxr model with Accelerate.

    accelerate launch training_scripts/train.py --model cr_msnet --dataset DIR --output-dir OUT \\
        --recipe cr_msnet_chestxray14 [--preset tiny] [--max-steps N] [--resume-from-checkpoint latest]

Plain `python training_scripts/train.py ...` runs one process; `hf-cxr train ...` is the same command.
All logic lives in `hf_cxr.training`.
"""

import sys

from hf_cxr.training import main

if __name__ == "__main__":
    sys.exit(main())
