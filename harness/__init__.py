"""finetune-sweeps: which fine-tuning technique and hyperparameters give the best accuracy
for the money. `harness-train` runs one trial; `harness-sweep` runs an Optuna sweep."""

import os

__version__ = "0.1.0"

# Read before anything imports peft: importing it (through bitsandbytes) fills in torch's
# default, so later the variable no longer tells whether the user chose a folder.
USER_INDUCTOR_CACHE = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
